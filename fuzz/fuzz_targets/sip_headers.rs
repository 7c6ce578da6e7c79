//! SIP header values from an INVITE (`realtime.call.incoming` `sip_headers[]`): E.164 numbers,
//! `sip:`/`sips:`/`tel:` URIs (RFC 3261 §19.1, RFC 3966), name-addrs (RFC 3261 §20.10), header
//! lookup with compact forms and list splitting, the caller/dialed parties, and `Refer-To`
//! transfer targets.
//!
//! Input: text, one header per line as `Name: value` (a line without `:` is a value of an
//! unnamed header). Every value (and every whole line) also goes through each parser on its own.
//!
//! Properties:
//! - nothing panics;
//! - [`E164::parse`] accepts exactly `+` and 1 to 15 digits not starting with 0, and keeps the
//!   text; [`normalize_number`] only returns numbers [`E164::parse`] accepts;
//! - a parsed `tel:` global number is `+` and digits, a local one carries `phone-context`, a
//!   parsed SIP URI has a host, and any `e164()` is a valid E.164;
//! - a [`TransferTarget`] round trips through `as_uri()`, `Display` and serde;
//! - header lookup is case-insensitive and treats compact forms (`f`, `t`, `i`) as long ones;
//!   split list items are trimmed and non-empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxmachina::sip::{
    CallParties, E164, SipHeader, SipUri, TransferTarget, header, headers_named, normalize_number,
    parse_name_addr,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let headers: Vec<SipHeader> = text
        .lines()
        .map(|l| match l.split_once(':') {
            Some((n, v)) if !n.contains('<') && !n.contains(' ') => SipHeader::new(n, v.trim()),
            _ => SipHeader::new("", l),
        })
        .collect();
    for h in &headers {
        values(&h.value);
    }
    for line in text.lines() {
        values(line);
    }

    let parties = CallParties::from_headers(&headers);
    if let Some(id) = &parties.sip_call_id {
        assert!(!id.is_empty() && id.trim() == id);
    }
    if let Some(name) = &parties.caller_display_name {
        assert!(!name.is_empty());
    }
    for (long, short) in [
        ("From", "f"),
        ("To", "t"),
        ("Call-ID", "i"),
        ("Contact", "m"),
    ] {
        assert_eq!(header(&headers, long), header(&headers, short));
        assert_eq!(
            header(&headers, long),
            header(&headers, &long.to_ascii_uppercase())
        );
    }
    for name in [
        "Diversion",
        "P-Asserted-Identity",
        "History-Info",
        "Subject",
    ] {
        for item in headers_named(&headers, name) {
            assert!(!item.is_empty() && item.trim() == item, "{item:?}");
        }
    }
});

fn values(v: &str) {
    match E164::parse(v) {
        Ok(n) => {
            assert_eq!(n.as_str(), v);
            assert_eq!(n.to_string(), v);
            let digits = n.digits();
            assert!((1..=15).contains(&digits.len()));
            assert!(digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0'));
            let json = serde_json::to_string(&n).expect("serializes");
            assert_eq!(serde_json::from_str::<E164>(&json).expect("round trip"), n);
        }
        Err(_) => {
            let d = v.strip_prefix('+').unwrap_or("");
            assert!(
                !(v.starts_with('+')
                    && (1..=15).contains(&d.len())
                    && d.bytes().all(|b| b.is_ascii_digit())
                    && !d.starts_with('0')),
                "refused a valid E.164 {v:?}"
            );
        }
    }
    if let Some(n) = normalize_number(v) {
        assert!(E164::parse(n.as_str()).is_ok());
    }
    if let Ok(uri) = SipUri::parse(v) {
        uri_ok(&uri);
    }
    if let Ok(na) = parse_name_addr(v) {
        uri_ok(&na.uri);
        assert_ne!(na.display_name.as_deref(), Some(""));
        for (k, _) in &na.params {
            assert!(!k.is_empty());
            assert!(na.param(k).is_some());
        }
    }
    if let Ok(t) = TransferTarget::parse(v) {
        let uri = t.as_uri();
        assert_eq!(t.to_string(), uri);
        assert_eq!(TransferTarget::parse(&uri).as_ref(), Ok(&t), "{uri:?}");
        let json = serde_json::to_string(&t).expect("serializes");
        assert_eq!(
            serde_json::from_str::<TransferTarget>(&json).expect("round trip"),
            t
        );
        match &t {
            TransferTarget::Tel(n) => assert_eq!(uri, format!("tel:{n}")),
            TransferTarget::Sip(s) => {
                assert_eq!(s, v.trim());
                assert!(matches!(SipUri::parse(s), Ok(SipUri::Sip { .. })));
            }
        }
    }
}

fn uri_ok(uri: &SipUri) {
    match uri {
        SipUri::Tel {
            number,
            global: true,
            ..
        } => {
            let digits = number
                .strip_prefix('+')
                .expect("a global number keeps its +");
            assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
        }
        SipUri::Tel {
            number,
            global: false,
            ..
        } => {
            assert!(!number.is_empty());
            assert!(matches!(uri.param("phone-context"), Some(Some(_))));
            assert!(uri.e164().is_none());
        }
        SipUri::Sip { host, .. } => assert!(!host.is_empty()),
    }
    if let Some(n) = uri.e164() {
        assert!(E164::parse(n.as_str()).is_ok());
    }
}
