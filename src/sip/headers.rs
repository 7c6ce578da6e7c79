//! Header lookup over the webhook's `sip_headers[]`.

use serde::{Deserialize, Serialize};

/// One SIP header as delivered in the webhook's `data.sip_headers[]` (OpenAPI
/// `WebhookRealtimeCallIncoming`): the name as the carrier wrote it (any case, possibly a compact
/// form such as `f`) and the raw value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SipHeader {
    /// Header name, e.g. `From`, `P-Asserted-Identity`, `f`.
    pub name: String,
    /// Raw header value, e.g. `"Alice" <sip:+14155550123@example.com>;tag=1`.
    pub value: String,
}

impl SipHeader {
    /// Convenience constructor.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Expands an RFC 3261 §7.3.3 compact header name (and the compact forms registered by later
/// RFCs: `o` Event RFC 6665, `r` Refer-To RFC 3515, `b` Referred-By RFC 3892, `u` Allow-Events
/// RFC 6665, `a`/`j` Accept-/Reject-Contact RFC 3841, `d` Request-Disposition RFC 3841,
/// `x` Session-Expires RFC 4028, `y` Identity RFC 8224) to the long name; other names unchanged.
fn long_name(name: &str) -> &str {
    let b = name.as_bytes();
    if b.len() != 1 {
        return name;
    }
    match b[0].to_ascii_lowercase() {
        b'a' => "Accept-Contact",
        b'b' => "Referred-By",
        b'c' => "Content-Type",
        b'd' => "Request-Disposition",
        b'e' => "Content-Encoding",
        b'f' => "From",
        b'i' => "Call-ID",
        b'j' => "Reject-Contact",
        b'k' => "Supported",
        b'l' => "Content-Length",
        b'm' => "Contact",
        b'o' => "Event",
        b'r' => "Refer-To",
        b's' => "Subject",
        b't' => "To",
        b'u' => "Allow-Events",
        b'v' => "Via",
        b'x' => "Session-Expires",
        b'y' => "Identity",
        _ => name,
    }
}

/// True when the two header names denote the same header: case-insensitive, compact forms
/// equal to their long names.
fn same_header(a: &str, b: &str) -> bool {
    long_name(a.trim()).eq_ignore_ascii_case(long_name(b.trim()))
}

/// Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1: "multiple header field
/// values ... as a comma-separated list"). Only these are split by [`headers_named`]; a comma in
/// `Subject`, `Call-ID` or `Date` stays part of the value.
const LIST_HEADERS: &[&str] = &[
    "Diversion",            // RFC 5806
    "History-Info",         // RFC 7044
    "P-Asserted-Identity",  // RFC 3325 (a sip: and a tel: entry)
    "P-Preferred-Identity", // RFC 3325
    "Contact",              // RFC 3261
    "Route",                // RFC 3261
    "Record-Route",         // RFC 3261
    "Path",                 // RFC 3327
    "Via",                  // RFC 3261
    "Supported",            // RFC 3261
    "Require",              // RFC 3261
    "Proxy-Require",        // RFC 3261
    "Unsupported",          // RFC 3261
    "Allow",                // RFC 3261
    "Allow-Events",         // RFC 6665
    "Accept",               // RFC 3261
    "Accept-Encoding",      // RFC 3261
    "Accept-Language",      // RFC 3261
];

/// The value of the first header named `name` (case-insensitive; `From` also finds `f`, `f`
/// also finds `From`, RFC 3261 §7.3.3), unsplit. `None` when there is no such header.
pub fn header<'a>(headers: &'a [SipHeader], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| same_header(&h.name, name))
        .map(|h| h.value.as_str())
}

/// Every value of the headers named `name`, in order, with compact forms matched as in
/// [`header`]. For list headers (Diversion RFC 5806, P-Asserted-Identity RFC 3325,
/// History-Info, Contact, Via, ...) each header value is also split at commas outside quoted
/// strings and angle brackets, so `Diversion: <sip:a@x>;counter=1, <sip:b@y>` yields two items.
/// Items are trimmed; empty items are skipped.
pub fn headers_named<'a>(headers: &'a [SipHeader], name: &'a str) -> impl Iterator<Item = &'a str> {
    let split = LIST_HEADERS.iter().any(|l| same_header(l, name));
    headers
        .iter()
        .filter(move |h| same_header(&h.name, name))
        .flat_map(move |h| {
            let parts = if split {
                split_list(&h.value)
            } else {
                vec![h.value.as_str()]
            };
            parts.into_iter().map(str::trim).filter(|s| !s.is_empty())
        })
}

/// Splits at commas that are outside `"..."` (with `\` escapes) and `<...>`.
fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_quotes, mut in_angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if in_quotes {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '<' => in_angle = true,
            '>' => in_angle = false,
            ',' if !in_angle => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(pairs: &[(&str, &str)]) -> Vec<SipHeader> {
        pairs.iter().map(|(n, v)| SipHeader::new(*n, *v)).collect()
    }

    #[test]
    fn header_is_case_insensitive_and_first_wins() {
        let h = hs(&[
            ("Via", "SIP/2.0/UDP a"),
            ("from", "<sip:first@example.com>"),
            ("From", "<sip:second@example.com>"),
        ]);
        assert_eq!(header(&h, "FROM"), Some("<sip:first@example.com>"));
        assert_eq!(header(&h, "To"), None);
    }

    #[test]
    fn compact_forms_match_both_ways() {
        let h = hs(&[
            ("f", "<sip:alice@example.com>;tag=1"),
            ("T", "<sip:bob@example.com>"),
            ("i", "a84b4c76e66710@pc33.atlanta.example.com"),
            ("Contact", "<sip:alice@pc33.example.com>"),
        ]);
        assert_eq!(header(&h, "From"), Some("<sip:alice@example.com>;tag=1"));
        assert_eq!(header(&h, "to"), Some("<sip:bob@example.com>"));
        assert_eq!(
            header(&h, "Call-ID"),
            Some("a84b4c76e66710@pc33.atlanta.example.com")
        );
        assert_eq!(header(&h, "m"), Some("<sip:alice@pc33.example.com>"));
        // 'q' is not a compact form: it must not match anything by accident
        assert_eq!(header(&h, "q"), None);
    }

    #[test]
    fn diversion_lists_are_split_outside_quotes_and_brackets() {
        let h = hs(&[
            (
                "Diversion",
                r#""Sales, East" <sip:+18005550100@carrier.example;user=phone>;reason=unconditional;counter=1, <sip:+18005550199@carrier.example>;reason=no-answer"#,
            ),
            ("Subject", "Hello, world"),
            ("diversion", "<tel:+14155550100>;reason=\"a,b\""),
        ]);
        let got: Vec<&str> = headers_named(&h, "Diversion").collect();
        assert_eq!(
            got,
            vec![
                r#""Sales, East" <sip:+18005550100@carrier.example;user=phone>;reason=unconditional;counter=1"#,
                "<sip:+18005550199@carrier.example>;reason=no-answer",
                "<tel:+14155550100>;reason=\"a,b\"",
            ]
        );
        // Subject is not a list header: the comma stays
        assert_eq!(
            headers_named(&h, "subject").collect::<Vec<_>>(),
            vec!["Hello, world"]
        );
        assert_eq!(headers_named(&h, "Nope").count(), 0);
    }

    #[test]
    fn split_list_handles_escaped_quotes_and_empty_items() {
        assert_eq!(
            split_list(r#""a \", b" <sip:x@y>, ,<sip:z@w>"#),
            vec![r#""a \", b" <sip:x@y>"#, " ", "<sip:z@w>"]
        );
        let h = hs(&[("P-Asserted-Identity", r#"<sip:+1@x>, , <tel:+14155550123>"#)]);
        assert_eq!(
            headers_named(&h, "p-asserted-identity").collect::<Vec<_>>(),
            vec!["<sip:+1@x>", "<tel:+14155550123>"]
        );
    }
}
