use std::borrow::Cow;

use super::inference::media_type_accepted;
use super::*;

#[test]
fn media_types_are_matched_without_case_and_binary_only_where_allowed() {
    for mime in [
        "application/json",
        "Application/JSON",
        "application/vnd.api+JSON",
        "text/plain",
    ] {
        assert!(media_type_accepted(mime, false), "{mime}");
    }
    assert!(media_type_accepted(
        "application/x-www-form-urlencoded",
        false
    ));
    assert!(media_type_accepted("application/octet-stream", true));
    assert!(!media_type_accepted("application/octet-stream", false));
    for mime in ["image/png", "json", "", "application/jsonx", "text/html"] {
        assert!(!media_type_accepted(mime, true), "{mime}");
    }
}

#[test]
fn paths_route_with_versions_percent_decoding_and_a_bound_on_segments() {
    let infer = |m: &'static str, v| Some(Route::Infer(Cow::Borrowed(m), v));
    assert_eq!(
        Route::parse("/v2/models/digits/infer"),
        infer("digits", None)
    );
    assert_eq!(
        Route::parse("/v2/models/digits/versions/3/infer"),
        infer("digits", Some("3"))
    );
    assert_eq!(
        Route::parse("/v2/models/a%20b/versions/1"),
        Some(Route::ModelMetadata(Cow::Owned("a b".into()), Some("1")))
    );
    assert_eq!(Route::parse("/"), Some(Route::StatusPage));
    assert_eq!(Route::parse("/v2/health/ready/"), Some(Route::Ready));
    assert_eq!(
        Route::parse("/v2/repository/models/x/unload"),
        Some(Route::RepositoryUnload(Cow::Borrowed("x")))
    );
    assert_eq!(
        Route::parse("/v2/models/digits/versions/3/infer/more"),
        None
    );
    assert_eq!(Route::parse("/a/b/c/d/e/f/g/h/i/j"), None);
    assert_eq!(Route::parse("/v2//health/live"), None);
    assert_eq!(Route::parse("//v2/health/live//"), Some(Route::Live));
    assert_eq!(Route::parse("/v2/models/digits/unknown"), None);
}

#[test]
fn trace_and_logging_settings_route_with_get_and_post_on_the_admin_plane() {
    assert_eq!(
        Route::parse("/v2/trace/setting"),
        Some(Route::TraceSetting(None))
    );
    assert_eq!(
        Route::parse("/v2/models/a%20b/trace/setting"),
        Some(Route::TraceSetting(Some(Cow::Owned("a b".into()))))
    );
    assert_eq!(Route::parse("/v2/logging"), Some(Route::Logging));
    assert_eq!(Route::parse("/v2/models/m/versions/1/trace/setting"), None);
    for route in [Route::TraceSetting(None), Route::Logging] {
        assert!(route.is_admin() && route.also_post());
        assert_eq!(route.method(), Method::GET);
        assert_eq!(route.allow(), "GET, POST");
    }
    assert_eq!(Route::Drain.allow(), "POST");
    assert_eq!(Route::Health.allow(), "GET");
}
