//! Text helpers with one copy each: cutting on a character boundary,
//! percent-encoding, and the stable hash peers divide work by. Everything here takes outside input (job errors,
//! handler output, URIs, HTTP requests), so nothing here may panic on any
//! byte sequence; the property tests below feed it arbitrary text.

use std::fmt::Write as _;

/// The longest prefix of `text` that is at most `max_bytes` long and ends
/// on a character boundary.
pub fn prefix(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Cuts `text` to at most `max_bytes` (on a character boundary) and marks
/// the cut with `marker`; text that fits is returned as it is.
pub fn truncate(mut text: String, max_bytes: usize, marker: &str) -> String {
    if text.len() > max_bytes {
        let end = prefix(&text, max_bytes).len();
        text.truncate(end);
        text.push_str(marker);
    }
    text
}

/// The first `chars` characters of `text`, with `…` when it was longer.
pub fn cut_chars(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Decodes `%XX` escapes as bytes (then UTF-8, lossily); a `%` that starts
/// no escape is kept as it is. Works on bytes, so a `%` before a multi-byte
/// character cannot split it.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[index + 1]), hex(bytes[index + 2])) {
                out.push(high * 16 + low);
                index += 3;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first `%` in `text` that does not start a `%XX` escape, as a byte
/// offset: a connection string with one is refused before the driver sees
/// it.
pub fn broken_percent_escape(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().find_map(|(index, byte)| {
        let escape = bytes.get(index + 1..index + 3);
        let valid = escape.is_some_and(|pair| hex(pair[0]).is_some() && hex(pair[1]).is_some());
        (*byte == b'%' && !valid).then_some(index)
    })
}

/// Encodes text for a URL query value (unreserved characters stay).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

/// FNV-1a, 64 bits: stable across processes, hosts and versions (std's
/// hasher is not), which is all that dividing work among peers needs.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_land_on_character_boundaries() {
        assert_eq!(prefix("héllo", 2), "h");
        assert_eq!(truncate("héllo".into(), 3, "…"), "hé…");
        assert_eq!(truncate("ok".into(), 3, "…"), "ok");
        assert_eq!(cut_chars("héllo", 2), "hé…");
        assert_eq!(cut_chars("hé", 2), "hé");
    }

    #[test]
    fn percent_escapes_decode_and_bad_ones_stay() {
        assert_eq!(percent_decode("p%40ss"), "p@ss");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%aé"), "%aé");
        assert_eq!(percent_decode("%é1"), "%é1");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode(&percent_encode("é <x>&")), "é <x>&");
    }

    #[test]
    fn broken_escapes_are_found() {
        assert_eq!(broken_percent_escape("mongodb://u:p%40@h"), None);
        assert_eq!(broken_percent_escape("mongodb://u:p%aé@h"), Some(13));
        assert_eq!(broken_percent_escape("50%"), Some(2));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases()))]
            #[test]
            fn any_text_decodes_and_cuts_without_panicking(text in "\\PC*|%[0-9a-fA-Fé%]{0,4}.*", max in 0usize..40) {
                let _ = percent_decode(&text);
                let _ = broken_percent_escape(&text);
                prop_assert!(prefix(&text, max).len() <= max);
                prop_assert!(text.starts_with(prefix(&text, max)));
                let _ = cut_chars(&text, max);
            }

            #[test]
            fn encoding_round_trips(text in "\\PC*") {
                prop_assert_eq!(percent_decode(&percent_encode(&text)), text);
            }
        }
    }
}
