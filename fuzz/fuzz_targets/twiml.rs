//! TwiML built from caller data: the `<Connect><Stream>` answer with the caller's `From`/`To`
//! and the profile as `<Parameter>`s, `<Say>`, `<Dial><Sip>` with SIP URI headers (the parent
//! `CallSid`, `User-to-User`), the Amazon Connect hand-over `<Dial><Number sendDigits>`, the
//! transfer `<Dial>`, and the XML escaper itself.
//!
//! Input: `from \0 to \0 profile \0 text \0 header value \0 digits \0 uri`.
//!
//! Properties (checked with roxmltree, a strict XML 1.0 parser):
//! - nothing panics, and every document the builders return is well-formed XML;
//! - caller data cannot add elements or attributes: each document has exactly the element tree
//!   and attribute names we built;
//! - caller data survives: each attribute and text decodes back to the input (without the
//!   characters XML 1.0 cannot carry, which the escaper drops);
//! - SIP URI headers stay separate: the `<Sip>` URI has exactly the headers we added, each
//!   value percent-decoding back to the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;
use roxmltree::{Document, Node};
use voxmachina::bridge::http::connect_twiml;
use voxmachina::bridge::link::transfer_twiml;
use voxmachina::escalation::twilio_dial::{dial_sip_twiml, handover_twiml};
use voxmachina::sip::{E164, TransferTarget};
use voxmachina::twilio::twiml::{
    Dial, PARAMETER_MAX_CHARS, Response, Say, SipTarget, Stream, escape,
};
use voxmachina_fuzz::{text_fields, xml_visible};

const BASE: &str = "https://voice.example.com";
const OPENAI_SIP_URI: &str = "sip:proj_fuzz@sip.api.openai.com;transport=tls";

fuzz_target!(|data: &[u8]| {
    let [from, to, profile, text, value, digits, uri] = text_fields::<7>(data);

    // The stream answer of POST /twilio/voice.
    // A well-formed stream token (`vst_` + 32 hex digits), as `POST /twilio/voice` mints.
    let token = "vst_0123456789abcdef0123456789abcdef".to_string();
    let xml = connect_twiml(BASE, &token, &profile, "inbound", &from, &to)
        .expect("a valid base URL");
    let doc = parse(&xml);
    let stream = only_child(only_child(doc.root_element(), "Connect"), "Stream");
    assert_eq!(
        attrs(stream),
        [
            ("url", "wss://voice.example.com/twilio/media".to_string()),
            ("statusCallback", format!("{BASE}/twilio/status")),
        ]
    );
    let expected: Vec<(String, String)> = [
        ("stream_token", &token),
        ("profile", &profile),
        ("direction", &"inbound".to_string()),
        ("from", &from),
        ("to", &to),
    ]
    .into_iter()
    .filter(|(n, v)| n.len() + v.chars().count() < PARAMETER_MAX_CHARS)
    .map(|(n, v)| (n.to_string(), xml_visible(v)))
    .collect();
    let got: Vec<(String, String)> = elements(stream)
        .map(|p| {
            assert_eq!(p.tag_name().name(), "Parameter");
            assert!(elements(p).next().is_none());
            let a = attrs(p);
            assert_eq!(
                a.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
                ["name", "value"]
            );
            (a[0].1.clone(), a[1].1.clone())
        })
        .collect();
    assert_eq!(got, expected);

    // <Say> with attributes, then <Hangup/>.
    let xml = Response::new()
        .verb(voxmachina::twilio::twiml::Verb::Say(
            Say::new(text.clone())
                .voice(from.clone())
                .language(to.clone()),
        ))
        .hangup()
        .render();
    let doc = parse(&xml);
    let kids: Vec<Node> = elements(doc.root_element()).collect();
    assert_eq!(
        kids.iter().map(|k| k.tag_name().name()).collect::<Vec<_>>(),
        ["Say", "Hangup"]
    );
    assert_eq!(
        attrs(kids[0]),
        [
            ("voice", xml_visible(&from)),
            ("language", xml_visible(&to))
        ]
    );
    assert_eq!(all_text(kids[0]), xml_visible(&text));

    // <Dial><Sip> with URI headers (the SIP path's answer and a custom target).
    if let Ok(xml) = dial_sip_twiml(OPENAI_SIP_URI, &value, &digits) {
        let doc = parse(&xml);
        let sip = only_child(only_child(doc.root_element(), "Dial"), "Sip");
        check_sip_headers(
            &all_text(sip),
            OPENAI_SIP_URI,
            &[("X-Twilio-CallSid", &value), ("X-Voxmachina-CallSid-Mac", &digits)],
        );
    }
    let target = SipTarget::new(uri.trim())
        .unwrap_or_else(|_| SipTarget::new(OPENAI_SIP_URI).expect("fixed URI"));
    let base_uri = target.render_uri();
    let target = target
        .header("X-Account", &value)
        .expect("X- header")
        .header("User-to-User", &from)
        .expect("UUI header");
    let xml = Response::new().dial(Dial::new(target.clone())).render();
    let doc = parse(&xml);
    let sip = only_child(only_child(doc.root_element(), "Dial"), "Sip");
    assert_eq!(all_text(sip), xml_visible(&target.render_uri()));
    check_sip_headers(
        &target.render_uri(),
        &base_uri,
        &[("X-Account", &value), ("User-to-User", &from)],
    );

    // The Amazon Connect hand-over.
    let number = E164::parse(to.trim()).unwrap_or_else(|_| E164::parse("+18005550100").unwrap());
    match handover_twiml(&number, Some(&digits)) {
        Ok(xml) => {
            let doc = parse(&xml);
            let n = only_child(only_child(doc.root_element(), "Dial"), "Number");
            assert_eq!(attrs(n), [("sendDigits", format!("wwww{digits}#"))]);
            assert_eq!(all_text(n), number.as_str());
        }
        Err(_) => assert!(
            digits.is_empty()
                || !digits
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"ABCD*#wW".contains(&b))
        ),
    }

    // A transfer on the Twilio path.
    if let Ok(t) = TransferTarget::parse(&uri) {
        if let Ok(xml) = transfer_twiml(&t) {
            let doc = parse(&xml);
            let dial = only_child(doc.root_element(), "Dial");
            let noun = elements(dial).next().expect("a noun");
            assert!(elements(dial).nth(1).is_none());
            match &t {
                TransferTarget::Tel(n) => {
                    assert_eq!(noun.tag_name().name(), "Number");
                    assert_eq!(all_text(noun), n.as_str());
                }
                TransferTarget::Sip(s) => {
                    assert_eq!(noun.tag_name().name(), "Sip");
                    assert_eq!(all_text(noun), xml_visible(s));
                }
            }
        }
    }

    // A stream with caller-chosen name, callback and parameter.
    if let Ok(stream) = Stream::new(uri.clone()) {
        let stream = stream
            .name(text.clone())
            .status_callback(from.clone(), Some(&to));
        let with_param = stream.clone().parameter(profile.clone(), text.clone());
        let xml = Response::new()
            .connect_stream(with_param.clone().unwrap_or(stream))
            .render();
        let doc = parse(&xml);
        let s = only_child(only_child(doc.root_element(), "Connect"), "Stream");
        let mut want = vec![
            ("url", xml_visible(&uri)),
            ("name", xml_visible(&text)),
            ("statusCallback", xml_visible(&from)),
            ("statusCallbackMethod", xml_visible(&to)),
        ];
        assert_eq!(attrs(s), want);
        match with_param {
            Ok(_) => {
                let p = only_child(s, "Parameter");
                want = vec![
                    ("name", xml_visible(&profile)),
                    ("value", xml_visible(&text)),
                ];
                assert_eq!(attrs(p), want);
            }
            Err(_) => assert!(elements(s).next().is_none()),
        }
    }

    // The escaper on its own, in an attribute and in text.
    let xml = format!("<a b=\"{}\">{}</a>", escape(&text), escape(&text));
    let doc = parse(&xml);
    let a = doc.root_element();
    assert_eq!(
        a.attribute("b").map(str::to_string),
        Some(xml_visible(&text))
    );
    assert_eq!(all_text(a), xml_visible(&text));
});

fn parse(xml: &str) -> Document<'_> {
    let doc = Document::parse(xml).unwrap_or_else(|e| panic!("not well-formed ({e}): {xml}"));
    if xml.starts_with("<?xml") {
        assert_eq!(doc.root_element().tag_name().name(), "Response");
    }
    doc
}

fn elements<'a, 'i>(n: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(Node::is_element)
}

/// The only element child of `n`, which must be called `name`.
fn only_child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Node<'a, 'i> {
    let mut kids = elements(n);
    let first = kids.next().unwrap_or_else(|| panic!("no <{name}>"));
    assert_eq!(first.tag_name().name(), name);
    assert!(
        kids.next().is_none(),
        "more than <{name}> in <{}>",
        n.tag_name().name()
    );
    first
}

fn attrs<'a>(n: Node<'a, '_>) -> Vec<(&'a str, String)> {
    n.attributes()
        .map(|a| (a.name(), a.value().to_string()))
        .collect()
}

/// The element's text content (no child elements allowed).
fn all_text(n: Node<'_, '_>) -> String {
    assert!(
        elements(n).next().is_none(),
        "child elements in <{}>",
        n.tag_name().name()
    );
    n.children().filter_map(|c| c.text()).collect()
}

/// `uri` is `base` followed by exactly `headers`, each value percent-decoding to the input.
fn check_sip_headers(uri: &str, base: &str, headers: &[(&str, &String)]) {
    let rest = uri
        .strip_prefix(base)
        .expect("the URI starts with its base");
    let rest = rest.strip_prefix('?').expect("a header part");
    let parts: Vec<&str> = rest.split('&').collect();
    assert_eq!(parts.len(), headers.len(), "{uri:?}");
    for (part, (name, value)) in parts.iter().zip(headers) {
        let (n, v) = part.split_once('=').expect("name=value");
        assert_eq!(n, *name);
        assert!(!v.contains(['&', '=', ';', '<', '>', '"', ' ']), "{v:?}");
        assert_eq!(percent_decode_str(v).collect::<Vec<u8>>(), value.as_bytes());
    }
}
