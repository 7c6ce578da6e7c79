//! TwiML rendering: exact strings for every verb (Twilio's `<Stream>` TwiML docs; Twilio's TwiML
//! docs), escaping, refusals.

use voxmachina::twilio::twiml::{
    Dial, Number, Refer, Response, Say, SipTarget, Stream, TwimlError, escape,
};

const DECL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

#[test]
fn empty_response() {
    assert_eq!(Response::new().render(), format!("{DECL}<Response/>"));
}

#[test]
fn connect_stream_with_parameters() {
    let stream = Stream::new("wss://example.com/media")
        .unwrap()
        .name("optional-unique-name")
        .status_callback("https://example.com/stream-status", Some("POST"))
        .parameter("token", "abc123")
        .unwrap()
        .parameter("lang", "en-US")
        .unwrap();
    let xml = Response::new()
        .connect_stream(stream)
        .say("Only reached after OUR server closes the WebSocket.")
        .render();
    assert_eq!(
        xml,
        format!(
            "{DECL}<Response><Connect><Stream url=\"wss://example.com/media\" name=\"optional-unique-name\" \
             statusCallback=\"https://example.com/stream-status\" statusCallbackMethod=\"POST\">\
             <Parameter name=\"token\" value=\"abc123\"/><Parameter name=\"lang\" value=\"en-US\"/>\
             </Stream></Connect><Say>Only reached after OUR server closes the WebSocket.</Say></Response>"
        )
    );
}

#[test]
fn connect_stream_without_parameters_is_self_closing() {
    let xml = Response::new()
        .connect_stream(Stream::new("wss://x.example/media").unwrap())
        .render();
    assert_eq!(
        xml,
        format!(
            "{DECL}<Response><Connect><Stream url=\"wss://x.example/media\"/></Connect></Response>"
        )
    );
}

#[test]
fn stream_url_refusals() {
    assert_eq!(
        Stream::new("wss://example.com/media?token=1"),
        Err(TwimlError::StreamUrlQuery(
            "wss://example.com/media?token=1".into()
        ))
    );
    assert!(matches!(
        Stream::new("https://example.com/media"),
        Err(TwimlError::StreamUrlScheme(_))
    ));
    assert!(matches!(
        Stream::new("ws://example.com/media"),
        Err(TwimlError::StreamUrlScheme(_))
    ));
    // Relative URLs and an upper-case scheme are fine.
    assert!(Stream::new("/media").is_ok());
    assert!(Stream::new("WSS://example.com/media").is_ok());
}

#[test]
fn parameter_length_limit_is_under_500_characters() {
    let s = || Stream::new("wss://x/m").unwrap();
    assert!(s().parameter("n", "v".repeat(498)).is_ok()); // 499 in all
    assert_eq!(
        s().parameter("n", "v".repeat(499)).unwrap_err(),
        TwimlError::ParameterTooLong(500)
    );
    // Characters, not bytes.
    assert!(s().parameter("n", "é".repeat(498)).is_ok());
    assert_eq!(
        s().parameter("", "v").unwrap_err(),
        TwimlError::EmptyParameterName
    );
}

#[test]
fn dial_number_with_send_digits() {
    let xml = Response::new()
        .dial(
            Dial::new(
                Number::new("+18005550100")
                    .unwrap()
                    .send_digits("wwww1234567890#")
                    .unwrap(),
            )
            .caller_id("+15017122661")
            .timeout(30),
        )
        .render();
    assert_eq!(
        xml,
        format!(
            "{DECL}<Response><Dial timeout=\"30\" callerId=\"+15017122661\">\
             <Number sendDigits=\"wwww1234567890#\">+18005550100</Number></Dial></Response>"
        )
    );
}

#[test]
fn dial_attributes_in_reference_order() {
    // TwiML `<Dial>`/`<Number>` example.
    let xml = Response::new()
        .dial(
            Dial::new(
                Number::new("+18005550100")
                    .unwrap()
                    .send_digits("wwww123456#")
                    .unwrap(),
            )
            .answer_on_bridge(true)
            .timeout(30)
            .caller_id("+15017122661")
            .action("https://x.example/dial-done"),
        )
        .render();
    assert_eq!(
        xml,
        format!(
            "{DECL}<Response><Dial answerOnBridge=\"true\" timeout=\"30\" callerId=\"+15017122661\" \
             action=\"https://x.example/dial-done\"><Number sendDigits=\"wwww123456#\">+18005550100</Number>\
             </Dial></Response>"
        )
    );
}

#[test]
fn dial_plain_number_and_several_targets() {
    let xml = Response::new()
        .dial(
            Dial::new(Number::new("+18005550100").unwrap())
                .target(Number::new("+18005550101").unwrap()),
        )
        .hangup()
        .render();
    assert_eq!(
        xml,
        format!(
            "{DECL}<Response><Dial><Number>+18005550100</Number><Number>+18005550101</Number></Dial>\
             <Hangup/></Response>"
        )
    );
}

#[test]
fn number_and_digit_refusals() {
    assert!(matches!(
        Number::new("18005550100"),
        Err(TwimlError::InvalidNumber(_))
    ));
    assert!(matches!(
        Number::new("+1 800 555 0100"),
        Err(TwimlError::InvalidNumber(_))
    ));
    let n = Number::new("+18005550100").unwrap();
    assert!(n.clone().send_digits("W1234#*ABCDw").is_ok());
    for bad in ["", "12e", "1 2", "x", "12&"] {
        assert_eq!(
            n.clone().send_digits(bad).unwrap_err(),
            TwimlError::InvalidDigits(bad.into()),
            "{bad:?}"
        );
    }
    assert!(Response::new().play_digits("wwww1234#").is_ok());
    assert!(Response::new().play_digits("12<").is_err());
}

#[test]
fn dial_sip_with_uri_headers() {
    let sip = SipTarget::new("sip:agent@pbx.example.com")
        .unwrap()
        .header("X-Token", "123456")
        .unwrap()
        .header("X-Note", "a b;c=d&e")
        .unwrap();
    assert_eq!(
        sip.render_uri(),
        "sip:agent@pbx.example.com?X-Token=123456&X-Note=a%20b%3Bc%3Dd%26e"
    );
    let xml = Response::new().dial(Dial::new(sip)).render();
    assert_eq!(
        xml,
        format!(
            "{DECL}<Response><Dial><Sip>sip:agent@pbx.example.com?X-Token=123456&amp;X-Note=a%20b%3Bc%3Dd%26e</Sip>\
             </Dial></Response>"
        )
    );
}

#[test]
fn refer_matches_the_reference_example() {
    // TwiML `<Refer>`.
    let sip = SipTarget::new("sip:alice@example.com")
        .unwrap()
        .header("User-to-User", "123456789;encoding=hex")
        .unwrap()
        .header("X-AcctNumber", "123456")
        .unwrap();
    let xml = Response::new()
        .refer(Refer::new(sip).action("/handleRefer", Some("POST")))
        .render();
    assert_eq!(
        xml,
        format!(
            "{DECL}<Response><Refer action=\"/handleRefer\" method=\"POST\">\
             <Sip>sip:alice@example.com?User-to-User=123456789%3Bencoding%3Dhex&amp;X-AcctNumber=123456</Sip>\
             </Refer></Response>"
        )
    );
}

#[test]
fn sip_refusals() {
    for bad in [
        "tel:+1555",
        "alice@example.com",
        "sip:a@b?X-A=1",
        "sip:",
        "sips:",
        "sipx:a@b",
    ] {
        assert!(
            matches!(SipTarget::new(bad), Err(TwimlError::InvalidSipUri(_))),
            "{bad}"
        );
    }
    assert!(SipTarget::new("sip:a").is_ok());
    assert!(SipTarget::new("SIP:+15551234567@trunk.example").is_ok());
    let s = SipTarget::new("sips:a@b.example").unwrap();
    for bad in ["Contact", "X-", "X-Has Space", "X-a=b", "Via"] {
        assert!(
            matches!(
                s.clone().header(bad, "1"),
                Err(TwimlError::InvalidSipHeader(_))
            ),
            "{bad}"
        );
    }
    assert!(s.clone().header("x-lower", "1").is_ok());
    assert!(s.header("user-to-user", "1").is_ok());
}

#[test]
fn say_play_hangup() {
    let xml = Response::new()
        .verb(voxmachina::twilio::twiml::Verb::Say(
            Say::new("Hello").voice("Polly.Joanna").language("en-US"),
        ))
        .play_digits("wwww1234#")
        .unwrap()
        .hangup()
        .render();
    assert_eq!(
        xml,
        format!(
            "{DECL}<Response><Say voice=\"Polly.Joanna\" language=\"en-US\">Hello</Say>\
             <Play digits=\"wwww1234#\"/><Hangup/></Response>"
        )
    );
}

#[test]
fn escaping_in_text_and_attributes() {
    assert_eq!(escape(r#"a&b<c>d"e'f"#), "a&amp;b&lt;c&gt;d&quot;e&apos;f");
    let xml = Response::new()
        .say(r#"Tom & Jerry <say> "hi" it's"#)
        .connect_stream(
            Stream::new("wss://x.example/m")
                .unwrap()
                .parameter("q\"&", "<'v'>\n2")
                .unwrap(),
        )
        .render();
    assert_eq!(
        xml,
        format!(
            "{DECL}<Response><Say>Tom &amp; Jerry &lt;say&gt; &quot;hi&quot; it&apos;s</Say>\
             <Connect><Stream url=\"wss://x.example/m\"><Parameter name=\"q&quot;&amp;\" \
             value=\"&lt;&apos;v&apos;&gt;&#10;2\"/></Stream></Connect></Response>"
        )
    );
}

#[test]
fn forbidden_xml_characters_are_dropped_and_text_newlines_kept() {
    let xml = Response::new().say("a\u{0}b\u{1b}c\nd\u{FFFF}").render();
    assert_eq!(xml, format!("{DECL}<Response><Say>abc\nd</Say></Response>"));
}
