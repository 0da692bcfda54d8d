//! Text from a guest (what it prints, its panic messages) made safe for the
//! host's log. A guest is untrusted: left raw, a `\r` or a terminal escape
//! could forge or hide log lines, and a bidi override could make a line read
//! differently from what it says. Such characters are written as `\u{..}`
//! escapes; everything else passes unchanged.

use std::borrow::Cow;

/// `text` with control characters and bidi controls escaped.
pub fn for_log(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs_escape(c) {
            escaped.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// C0 and C1 controls (tab included: it can be used to align forged
/// columns), and the Unicode bidi embedding, override and isolate controls.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::for_log;

    #[test]
    fn control_and_bidi_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(for_log("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(
            for_log("\x1b[31mred\rforged \u{202e}txt"),
            "\\u{1b}[31mred\\u{d}forged \\u{202e}txt"
        );
        assert_eq!(for_log("a\tb\nc"), "a\\u{9}b\\u{a}c");
    }
}
