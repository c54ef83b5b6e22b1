//! An HTTP request as the handlers see it, and parsing one from the bytes
//! received so far, within bounds: the head and body sizes are capped, so a
//! client cannot make the server buffer without limit.

use mongoq::text::percent_decode;

/// Longest request line plus headers.
pub const MAX_HEAD: usize = 16 * 1024;
/// Longest request body (forms are small).
pub const MAX_BODY: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, percent-decoded, without the query string.
    pub path: String,
    /// Query string pairs, decoded.
    pub query: Vec<(String, String)>,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        value_of(&self.query, name)
    }

    /// The body as `application/x-www-form-urlencoded` pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        parse_pairs(&String::from_utf8_lossy(&self.body))
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    }
}

/// Parses a request from the bytes received so far: `Ok(None)` while the
/// head or the body is incomplete, an error status when it can never be a
/// request we serve (431 head too large, 413 body too large, 400
/// malformed). Pure, so the intake thread can feed it whatever arrived and
/// the property tests can feed it anything.
pub fn parse(bytes: &[u8]) -> Result<Option<Request>, u16> {
    let Some(head_end) = find_head_end(bytes) else {
        return if bytes.len() > MAX_HEAD {
            Err(431)
        } else {
            Ok(None)
        };
    };
    if head_end > MAX_HEAD {
        return Err(431);
    }
    let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| 400u16)?;
    let mut lines = head.split('\n').map(|line| line.trim_end_matches('\r'));
    let mut parts = lines.next().ok_or(400u16)?.split_whitespace();
    let method = parts.next().ok_or(400u16)?.to_string();
    let target = parts.next().ok_or(400u16)?.to_string();
    let mut headers = Vec::new();
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(400u16)?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(Ok(0), |(_, v)| v.parse::<usize>().map_err(|_| 400u16))?;
    if length > MAX_BODY {
        return Err(413);
    }
    let body_start = head_end + terminator_len(bytes, head_end);
    let Some(body) = bytes.get(body_start..body_start + length) else {
        return Ok(None);
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    Ok(Some(Request {
        method,
        path: percent_decode(path),
        query: parse_pairs(query),
        headers,
        body: body.to_vec(),
    }))
}

/// Where the head ends: the offset of the blank line's terminator
/// (`\r\n\r\n` or a bare `\n\n`).
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = bytes.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn terminator_len(bytes: &[u8], head_end: usize) -> usize {
    if bytes[head_end..].starts_with(b"\r\n\r\n") {
        4
    } else {
        2
    }
}

/// The value of the first pair called `name`.
pub fn value_of<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `a=1&b=x%20y` → pairs, decoded (`+` is a space).
pub fn parse_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&name.replace('+', " ")),
                percent_decode(&value.replace('+', " ")),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fmt::Write as _;

    #[test]
    fn a_request_is_parsed_once_it_is_whole() {
        let full = b"POST /retry?id=a%20b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab=cd";
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let request = parse(full).unwrap().unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/retry");
        assert_eq!(request.param("id"), Some("a b"));
        assert_eq!(request.header("HOST"), Some("x"));
        assert_eq!(request.form(), vec![("ab".into(), "cd".into())]);
        assert_eq!(parse(b"GET / HTTP/1.0\n\n").unwrap().unwrap().path, "/");
    }

    #[test]
    fn oversized_and_malformed_requests_get_their_status() {
        assert_eq!(parse(&vec![b'a'; MAX_HEAD + 1]).unwrap_err(), 431);
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(parse(big.as_bytes()).unwrap_err(), 413);
        assert_eq!(parse(b"GET\r\n\r\n").unwrap_err(), 400);
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nno colon\r\n\r\n").unwrap_err(),
            400
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").unwrap_err(),
            400
        );
        assert_eq!(parse(b"GET /\xff HTTP/1.1\r\n\r\n").unwrap_err(), 400);
    }

    fn plausible_head() -> impl Strategy<Value = Vec<u8>> {
        (
            "[A-Z]{0,7}",
            "/[ -~]{0,30}",
            prop::collection::vec(("[!-9;-~]{0,12}", "[ -~]{0,20}"), 0..5),
            prop::option::of(0usize..100),
            prop::collection::vec(any::<u8>(), 0..40),
            any::<usize>(),
        )
            .prop_map(|(method, target, headers, length, body, cut)| {
                let mut text = format!("{method} {target} HTTP/1.1\r\n");
                for (name, value) in headers {
                    let _ = write!(text, "{name}: {value}\r\n");
                }
                if let Some(length) = length {
                    let _ = write!(text, "Content-Length: {length}\r\n");
                }
                text.push_str("\r\n");
                let mut bytes = text.into_bytes();
                bytes.extend(body);
                let cut = cut % (bytes.len() + 1);
                bytes.truncate(cut.max(1));
                bytes
            })
    }

    mod properties {
        use super::*;
        use crate::fuzz_cases;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

            /// Arbitrary bytes never panic the parser.
            #[test]
            fn any_bytes_parse_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
                match parse(&bytes) {
                    Ok(Some(request)) => prop_assert!(!request.method.is_empty()),
                    Ok(None) => prop_assert!(bytes.len() <= MAX_HEAD),
                    Err(status) => prop_assert!([400, 413, 431].contains(&status)),
                }
            }

            /// Plausible heads cut anywhere: incomplete, refused, or whole.
            #[test]
            fn plausible_heads_cut_anywhere_never_panic(bytes in plausible_head()) {
                let _ = parse(&bytes);
            }

            /// Forms and queries of any text decode without panicking.
            #[test]
            fn any_form_decodes(text in "\\PC{0,80}|[%&=+a-f0-9é]{0,40}") {
                let _ = parse_pairs(&text);
            }
        }
    }

    #[test]
    fn forms_and_queries_decode() {
        assert_eq!(
            parse_pairs("a=1&b=x+y%21&c"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y!".into()),
                ("c".into(), String::new())
            ]
        );
    }
}
