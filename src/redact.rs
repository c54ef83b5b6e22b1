//! Keeping secrets out of logs and error messages.
//!
//! A MongoDB URI carries the password in its user-info part
//! (`mongodb://user:secret@host`). Anything that shows a URI to a person
//! goes through [`redact_uri`] first; errors from the driver go through
//! [`redact_text`] with the URI they came from, because a driver error may
//! quote the connection string it failed to parse.

use crate::text::percent_decode;

/// Replaces the password in a MongoDB URI with `****`.
///
/// Works on text that is not a valid URI too: whatever sits between the
/// scheme's `//` and the last `@` before the host list is treated as
/// user info.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &uri[rest_start..];
    // The user info ends at the last '@' before the path; passwords may
    // contain '@' only percent-encoded, but be generous and take the last.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return uri.to_string();
    };
    let user_info = &authority[..at];
    let user = user_info.split(':').next().unwrap_or("");
    let redacted_user_info = if user_info.contains(':') {
        format!("{user}:****")
    } else {
        user.to_string()
    };
    format!(
        "{}{}{}",
        &uri[..rest_start],
        redacted_user_info,
        &rest[at..]
    )
}

/// Removes the password of `uri` from `text` wherever it appears, in plain
/// or percent-decoded form.
pub fn redact_text(text: &str, uri: &str) -> String {
    let mut out = text.replace(uri, &redact_uri(uri));
    if let Some(password) = password_of(uri) {
        if !password.is_empty() {
            out = out.replace(&password, "****");
            let decoded = percent_decode(&password);
            if !decoded.is_empty() {
                out = out.replace(&decoded, "****");
            }
        }
    }
    out
}

fn password_of(uri: &str) -> Option<String> {
    let rest = &uri[uri.find("://")? + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let user_info = &authority[..authority.rfind('@')?];
    let (_, password) = user_info.split_once(':')?;
    Some(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_the_password_only() {
        assert_eq!(
            redact_uri("mongodb://alice:s3cret@db1:27017,db2/queue?tls=true"),
            "mongodb://alice:****@db1:27017,db2/queue?tls=true"
        );
        assert_eq!(
            redact_uri("mongodb+srv://bob:p%40ss@cluster.example.net"),
            "mongodb+srv://bob:****@cluster.example.net"
        );
        assert_eq!(redact_uri("mongodb://localhost"), "mongodb://localhost");
        assert_eq!(redact_uri("mongodb://carol@host"), "mongodb://carol@host");
        assert_eq!(redact_uri("not a uri"), "not a uri");
    }

    #[test]
    fn scrubs_text_that_quotes_the_password() {
        let uri = "mongodb://alice:p%40ss@db1";
        let text = format!("cannot parse {uri}: bad password p@ss or p%40ss");
        let clean = redact_text(&text, uri);
        assert!(!clean.contains("p@ss"), "{clean}");
        assert!(!clean.contains("p%40ss"), "{clean}");
        assert!(clean.contains("alice:****@db1"), "{clean}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases()))]

            /// Any text, URI or not, is redacted without panicking.
            #[test]
            fn any_text_redacts(text in "\\PC{0,60}|mongodb(\\+srv)?://[^/]{0,20}@?[ -~é]{0,20}") {
                let _ = redact_uri(&text);
                let _ = redact_text(&text, &text);
            }

            /// A password never survives redaction, in the URI or in a
            /// message quoting it (plain or percent-decoded).
            #[test]
            fn the_password_never_survives(
                user in "[a-z]{1,8}",
                password in "[A-Za-z0-9!*]{6,14}|[A-Za-z0-9]{3,6}%40[A-Za-z0-9]{3,6}",
                host in "[a-z]{1,8}(:[0-9]{2,5})?(,[a-z]{1,8})?",
                path in "(/[a-z]{0,6})?(\\?[a-z=&]{0,12})?",
            ) {
                let uri = format!("mongodb://{user}:{password}@{host}{path}");
                let decoded = crate::text::percent_decode(&password);
                prop_assert!(!redact_uri(&uri).contains(&password));
                let message = format!("cannot use {uri}: wrong password {password} ({decoded})");
                let clean = redact_text(&message, &uri);
                prop_assert!(!clean.contains(&password), "{clean}");
                prop_assert!(!clean.contains(&decoded), "{clean}");
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases() / 10))]

            /// Connection strings of any shape go through the driver's
            /// parser (and mongoq's own check before it) without a panic:
            /// only a `mongodb://` or `mongodb+srv://` string is accepted,
            /// anything else is refused with a message that says why.
            #[test]
            fn any_connection_string_is_accepted_or_refused(
                text in "mongodb(\\+srv)?://[ -~é%]{0,30}(/[ -~]{0,10})?(\\?[ -~]{0,20})?|\\PC{0,30}",
            ) {
                match crate::Queue::connect(&crate::QueueConfig::new(text.clone())) {
                    Ok(_) => prop_assert!(
                        text.starts_with("mongodb://") || text.starts_with("mongodb+srv://"),
                        "accepted {text:?}"
                    ),
                    Err(error) => prop_assert!(
                        error.to_string().len() > 10,
                        "refused {text:?} without a reason: {error}"
                    ),
                }
            }
        }
    }
}
