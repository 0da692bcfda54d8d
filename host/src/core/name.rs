//! Model names and versions: the one checked type every entry point makes
//! them with (a URL path, an upload, a repository folder, a model's own
//! `metadata()`).
//!
//! A name ends up in three places that each have their own way of being
//! abused: the repository folder it is joined onto (`..%2Fsecret` would walk
//! out of it), the log (a newline forges a line, U+202E makes a name read as
//! another) and URLs (a `/` or `?` cannot be a path segment). So a name is
//! printable, at most [`MAX_LABEL`] bytes, one path segment, not `.` or `..`,
//! with no whitespace at either end. Checking once, at the edge, and passing
//! a [`ModelName`] inward means no layer below can join an unchecked string
//! onto a path.

use std::fmt;

/// The longest model name, version or tensor name accepted, in bytes.
pub const MAX_LABEL: usize = 128;

/// A model name that is safe as a path segment, a log field and a URL
/// segment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelName(String);

impl ModelName {
    /// Checks `text` as a model name; the error is one line that says why.
    pub fn parse(text: &str) -> Result<ModelName, String> {
        check_segment("model name", text)?;
        Ok(ModelName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for ModelName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Checks a model version: empty (the model reports none), or a name's
/// rules.
pub fn check_version(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Ok(());
    }
    check_segment("model version", text)
}

/// A name or version: a path segment of `/v2/models/{name}` (and
/// `/versions/{version}`) and of the repository folder, so no `/`, `\`, `?`
/// or `#`, not `.` or `..`, and nothing [`check_text`] refuses. Spaces
/// inside are fine (`a%20b`).
fn check_segment(what: &str, text: &str) -> Result<(), String> {
    check_text(what, text)?;
    if let Some(c) = text.chars().find(|c| matches!(c, '/' | '\\' | '?' | '#')) {
        return Err(format!(
            "{what} {:?} cannot be a path segment: it contains {c:?}",
            shown(text)
        ));
    }
    if text == "." || text == ".." {
        return Err(format!(
            "{what} {text:?} cannot be a path segment: it names a folder, not a model"
        ));
    }
    Ok(())
}

/// Any name the host prints or matches: not empty, at most [`MAX_LABEL`]
/// bytes, no control characters (a newline would forge log lines), no
/// Unicode bidirectional controls (they make a name read as another), and
/// no whitespace at either end (invisible, and lost by tools that trim).
pub fn check_text(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if text.len() > MAX_LABEL {
        return Err(format!(
            "{what} {:?}... is {} bytes long; at most {MAX_LABEL} are accepted",
            shown(text),
            text.len()
        ));
    }
    if let Some(c) = text.chars().find(|&c| c.is_control() || is_bidi_control(c)) {
        return Err(format!(
            "{what} {:?} contains the control character {:?} (U+{:04X}); names must be \
             printable",
            shown(text),
            c,
            c as u32
        ));
    }
    if text.trim() != text {
        return Err(format!(
            "{what} {:?} starts or ends with whitespace",
            shown(text)
        ));
    }
    Ok(())
}

/// At most 40 characters of a refused name, for its error message: a 4,000
/// byte name must not make a 4,000 byte log line.
fn shown(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Characters that reorder how text is displayed (Trojan Source).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_must_be_printable_bounded_path_segments() {
        for good in [
            "digits",
            "a b",
            "résumé-v2",
            "m.onnx",
            ".hidden-but-one-segment",
            &"n".repeat(MAX_LABEL),
        ] {
            assert_eq!(
                ModelName::parse(good).map(|n| n.into_string()),
                Ok(good.to_owned())
            );
        }
        for (bad, why) in [
            ("", "empty"),
            ("   ", "whitespace"),
            (" lead", "whitespace"),
            ("a/b", "'/'"),
            ("../outside/secret", "'/'"),
            ("/etc", "'/'"),
            ("a\\b", "'\\\\'"),
            ("a?b", "'?'"),
            ("a#b", "'#'"),
            ("..", "names a folder"),
            (".", "names a folder"),
            ("bad\nname", "control character"),
            ("bad\rname", "control character"),
            ("bad\tname", "control character"),
            ("nul\0byte", "control character"),
            ("bad\u{7f}", "control character"),
            ("bad\u{85}", "control character"),
            ("evil\u{202E}gpj.exe", "U+202E"),
            ("evil\u{2066}x", "U+2066"),
            (&"n".repeat(MAX_LABEL + 1), "at most 128"),
            (&"n".repeat(4000), "at most 128"),
        ] {
            let err = ModelName::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err:?}");
            assert!(err.len() < 300, "a short line whatever the name: {err:?}");
        }
    }

    #[test]
    fn versions_may_be_empty_but_are_otherwise_checked_like_names() {
        assert_eq!(check_version(""), Ok(()));
        assert_eq!(check_version("2024-06-01 rc 1"), Ok(()));
        for bad in ["1\n", "1/2", "..", "\u{202A}1", &"9".repeat(MAX_LABEL + 1)] {
            let err = check_version(bad).expect_err(bad);
            assert!(err.contains("model version"), "{bad:?}: {err}");
        }
    }

    /// A property test over generated strings (a fixed-seed generator, so a
    /// failure reproduces): whatever is accepted is one printable path
    /// segment, and nothing panics.
    #[test]
    fn every_accepted_name_is_one_printable_segment_whatever_the_input() {
        let alphabet: Vec<char> = "ab.-_ /\\?#\n\r\t\0\u{7f}\u{202E}\u{2066}é漢 "
            .chars()
            .collect();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let len = (next() % 12) as usize + if next() % 50 == 0 { 130 } else { 0 };
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let Ok(name) = ModelName::parse(&text) else {
                continue;
            };
            accepted += 1;
            let name = name.as_str();
            assert!(!name.is_empty() && name.len() <= MAX_LABEL, "{name:?}");
            assert!(name != "." && name != "..", "{name:?}");
            assert!(!name.contains(['/', '\\', '?', '#']), "{name:?}");
            assert!(
                !name.chars().any(|c| c.is_control() || is_bidi_control(c)),
                "{name:?}"
            );
            assert_eq!(name.trim(), name);
            // Joined onto a folder, it stays one level inside it.
            let joined = std::path::Path::new("/repo").join(name);
            assert_eq!(
                joined.parent(),
                Some(std::path::Path::new("/repo")),
                "{name:?}"
            );
        }
        assert!(
            accepted > 500,
            "the generator also makes good names: {accepted}"
        );
    }
}
