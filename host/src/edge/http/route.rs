//! Which route a request's path names: the paths the host serves, parsed
//! by hand into a [`Route`] (every request is routed, so without a `Vec` or
//! a `split`), with the model's name percent-decoded, and what each route
//! allows: its method, and whether it belongs to the admin plane.

use std::borrow::Cow;

use hyper::Method;

/// The routes, by path. A known path with the wrong method is a 405, an
/// unknown path a 404. Model routes carry the model's name and, when the
/// path names one, its version.
#[derive(Debug, PartialEq)]
pub(super) enum Route<'a> {
    StatusPage,
    Status,
    Health,
    Predict,
    Server,
    Live,
    Ready,
    Metrics,
    ModelMetadata(Cow<'a, str>, Option<&'a str>),
    ModelReady(Cow<'a, str>, Option<&'a str>),
    ModelConfig(Cow<'a, str>, Option<&'a str>),
    ModelStats(Option<Cow<'a, str>>, Option<&'a str>),
    Infer(Cow<'a, str>, Option<&'a str>),
    RepositoryIndex,
    RepositoryLoad(Cow<'a, str>),
    RepositoryUnload(Cow<'a, str>),
    Drain,
    Undrain,
    /// Triton's trace settings: the global ones, or a model's.
    TraceSetting(Option<Cow<'a, str>>),
    /// Triton's log settings.
    Logging,
}

impl Route<'_> {
    /// `None` for an unknown path. Model names are percent-decoded, so
    /// `/v2/models/a%20b/infer` reaches a model named `a b`.
    pub(super) fn parse(path: &str) -> Option<Route<'_>> {
        // Into an array, not a `Vec`: every request is routed, and no route
        // has more than six segments. Split at each `/` byte by hand:
        // `str::split('/')` runs a memchr per segment, 440 instructions a
        // request for paths this short.
        let mut all = [""; 6];
        let mut count = 0;
        let path = path.trim_matches('/');
        let mut start = 0;
        for end in (0..path.len()).filter(|&i| path.as_bytes()[i] == b'/') {
            *all.get_mut(count)? = &path[start..end];
            count += 1;
            start = end + 1;
        }
        *all.get_mut(count)? = &path[start..];
        count += 1;
        let mut versioned = [""; 4];
        let (segments, version) = match &all[..count] {
            ["v2", "models", m, "versions", v, rest @ ..] if rest.len() <= 1 => {
                versioned[..3].copy_from_slice(&["v2", "models", m]);
                versioned[3..3 + rest.len()].copy_from_slice(rest);
                (&versioned[..3 + rest.len()], Some(*v))
            }
            segments => (segments, None),
        };
        Some(match segments {
            [""] => Route::StatusPage,
            ["status"] => Route::Status,
            ["health"] => Route::Health,
            ["metrics"] => Route::Metrics,
            ["predict"] => Route::Predict,
            ["v2"] => Route::Server,
            ["v2", "health", "live"] => Route::Live,
            ["v2", "health", "ready"] => Route::Ready,
            ["v2", "trace", "setting"] => Route::TraceSetting(None),
            ["v2", "logging"] => Route::Logging,
            ["v2", "models", m, "trace", "setting"] => {
                Route::TraceSetting(Some(percent_decode(m)?))
            }
            ["v2", "models", "stats"] => Route::ModelStats(None, None),
            ["v2", "models", m] => Route::ModelMetadata(percent_decode(m)?, version),
            ["v2", "models", m, "ready"] => Route::ModelReady(percent_decode(m)?, version),
            ["v2", "models", m, "config"] => Route::ModelConfig(percent_decode(m)?, version),
            ["v2", "models", m, "stats"] => Route::ModelStats(Some(percent_decode(m)?), version),
            ["v2", "models", m, "infer"] => Route::Infer(percent_decode(m)?, version),
            ["v2", "repository", "index"] => Route::RepositoryIndex,
            ["v2", "repository", "drain"] => Route::Drain,
            ["v2", "repository", "undrain"] => Route::Undrain,
            ["v2", "repository", "models", m, "load"] => Route::RepositoryLoad(percent_decode(m)?),
            ["v2", "repository", "models", m, "unload"] => {
                Route::RepositoryUnload(percent_decode(m)?)
            }
            _ => return None,
        })
    }

    pub(super) fn method(&self) -> Method {
        match self {
            Route::Predict
            | Route::Infer(..)
            | Route::RepositoryIndex
            | Route::RepositoryLoad(_)
            | Route::RepositoryUnload(_)
            | Route::Drain
            | Route::Undrain => Method::POST,
            _ => Method::GET,
        }
    }

    /// Whether the route reads with GET and changes with POST (Triton's
    /// settings extensions); [`Route::method`] is then GET.
    pub(super) fn also_post(&self) -> bool {
        matches!(self, Route::TraceSetting(_) | Route::Logging)
    }

    /// The methods for `Allow`.
    pub(super) fn allow(&self) -> &'static str {
        if self.also_post() {
            "GET, POST"
        } else if self.method() == Method::POST {
            "POST"
        } else {
            "GET"
        }
    }

    pub(super) fn is_admin(&self) -> bool {
        matches!(
            self,
            Route::RepositoryIndex
                | Route::RepositoryLoad(_)
                | Route::RepositoryUnload(_)
                | Route::Drain
                | Route::Undrain
                | Route::TraceSetting(_)
                | Route::Logging
        )
    }
}

/// A path segment with its `%XX` escapes decoded; `None` if an escape is
/// malformed or the result is not UTF-8.
fn percent_decode(segment: &str) -> Option<Cow<'_, str>> {
    if !segment.bytes().any(|b| b == b'%') {
        return Some(Cow::Borrowed(segment));
    }
    let mut bytes = Vec::with_capacity(segment.len());
    let mut rest = segment.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok().map(Cow::Owned)
}
