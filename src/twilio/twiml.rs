//! A small TwiML builder for the verbs voxmachina uses, with XML escaping.
//!
//! Sources: <https://www.twilio.com/docs/voice/twiml/stream> (`<Connect><Stream>`),
//! <https://www.twilio.com/docs/voice/twiml/play> (`<Play digits>`),
//! <https://www.twilio.com/docs/voice/twiml/dial> and
//! <https://www.twilio.com/docs/voice/twiml/number> (`<Dial>`/`<Number sendDigits>`),
//! <https://www.twilio.com/docs/voice/twiml/refer> (`<Refer>`/`<Sip>` with SIP URI headers).
//!
//! [`Response::render`] produces a compact document (no whitespace between elements) starting with
//! `<?xml version="1.0" encoding="UTF-8"?>`. Attributes appear in a fixed order and only when set.
//! Text and attribute values escape `&`, `<`, `>`, `"` and `'` as `&amp;`, `&lt;`, `&gt;`,
//! `&quot;` and `&apos;`; tab, line feed and carriage return in attribute values become `&#9;`,
//! `&#10;` and `&#13;` (so XML attribute normalisation does not turn them into spaces), and a
//! carriage return in text becomes `&#13;` (XML 1.0 §2.11 end-of-line handling would read a raw
//! one as a line feed); other characters that XML 1.0 forbids (C0 controls, U+FFFE, U+FFFF) are
//! dropped.
//!
//! ```
//! use voxmachina::twilio::twiml::{Dial, Number, Response};
//! let xml = Response::new()
//!     .dial(Dial::new(Number::new("+18005550100").unwrap().send_digits("wwww123456#").unwrap()))
//!     .render();
//! assert_eq!(
//!     xml,
//!     r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial><Number sendDigits="wwww123456#">+18005550100</Number></Dial></Response>"#
//! );
//! ```

use std::fmt::Write as _;

/// The XML declaration every rendered document starts with.
pub const XML_DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// Limit on a `<Parameter>`: name and value together must be under this many characters.
pub const PARAMETER_MAX_CHARS: usize = 500;

/// A value the builder refuses because Twilio would reject it or misbehave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwimlError {
    /// A `<Stream url>` with a query string; Twilio does not support them, use `<Parameter>`.
    #[error("<Stream url> must not carry a query string (use <Parameter>): {0}")]
    StreamUrlQuery(String),
    /// A `<Stream url>` with an absolute scheme other than `wss` ("`wss` is the only protocol").
    #[error("<Stream url> must use wss://: {0}")]
    StreamUrlScheme(String),
    /// A `<Parameter>` whose name plus value is 500 characters or more.
    #[error("<Parameter> name and value together must be under 500 characters ({0})")]
    ParameterTooLong(usize),
    /// A `<Parameter>` with an empty name.
    #[error("<Parameter> name must not be empty")]
    EmptyParameterName,
    /// Digits outside `0-9`, `A`-`D`, `*`, `#`, `w`, `W`, or none at all.
    #[error("invalid DTMF digits {0:?}: allowed are 0-9, A-D, *, #, w (0.5 s) and W (1 s)")]
    InvalidDigits(String),
    /// A `<Number>` that is not E.164 (`+` then 1 to 15 digits).
    #[error("<Number> must be E.164: {0}")]
    InvalidNumber(String),
    /// A `<Sip>` target that is not a `sip:`/`sips:` URI without its own `?headers` part.
    #[error(
        "<Sip> target must be a sip: or sips: URI without '?' (add headers with .header()): {0}"
    )]
    InvalidSipUri(String),
    /// A SIP URI header name that is neither `X-...` nor `User-to-User`, or has characters outside
    /// an RFC 3261 token.
    #[error("SIP URI header {0:?} must be X-<token> or User-to-User")]
    InvalidSipHeader(String),
}

/// A `<Response>` document: verbs run in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    verbs: Vec<Verb>,
}

/// One verb of a [`Response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// `<Connect><Stream>`: a bidirectional Media Stream; blocks until our server closes the
    /// socket.
    Connect(Stream),
    /// `<Dial>` one or more `<Number>` or `<Sip>` nouns.
    Dial(Dial),
    /// `<Refer>` a SIP leg to a `<Sip>` target (<https://www.twilio.com/docs/voice/twiml/refer>; SIP legs only).
    Refer(Refer),
    /// `<Say>` text.
    Say(Say),
    /// `<Play digits="…"/>`: DTMF into the current call.
    PlayDigits(String),
    /// `<Hangup/>`.
    Hangup,
}

impl Response {
    /// An empty `<Response/>`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends any verb.
    pub fn verb(mut self, verb: Verb) -> Self {
        self.verbs.push(verb);
        self
    }

    /// Appends `<Connect><Stream …>…</Stream></Connect>`.
    pub fn connect_stream(self, stream: Stream) -> Self {
        self.verb(Verb::Connect(stream))
    }

    /// Appends `<Dial>`.
    pub fn dial(self, dial: Dial) -> Self {
        self.verb(Verb::Dial(dial))
    }

    /// Appends `<Refer>`.
    pub fn refer(self, refer: Refer) -> Self {
        self.verb(Verb::Refer(refer))
    }

    /// Appends `<Say>` with Twilio's default voice and language.
    pub fn say(self, text: impl Into<String>) -> Self {
        self.verb(Verb::Say(Say::new(text)))
    }

    /// Appends `<Play digits="…"/>`.
    ///
    /// # Errors
    /// [`TwimlError::InvalidDigits`] for characters outside `0-9A-D*#wW` or an empty string.
    pub fn play_digits(self, digits: impl Into<String>) -> Result<Self, TwimlError> {
        let digits = checked_digits(digits.into())?;
        Ok(self.verb(Verb::PlayDigits(digits)))
    }

    /// Appends `<Hangup/>`.
    pub fn hangup(self) -> Self {
        self.verb(Verb::Hangup)
    }

    /// The verbs so far.
    pub fn verbs(&self) -> &[Verb] {
        &self.verbs
    }

    /// The document: the XML declaration, then `<Response>` with every verb (or `<Response/>`).
    pub fn render(&self) -> String {
        let mut out = String::from(XML_DECLARATION);
        if self.verbs.is_empty() {
            out.push_str("<Response/>");
            return out;
        }
        out.push_str("<Response>");
        for verb in &self.verbs {
            verb.render(&mut out);
        }
        out.push_str("</Response>");
        out
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

impl Verb {
    fn render(&self, out: &mut String) {
        match self {
            Verb::Connect(stream) => {
                out.push_str("<Connect>");
                stream.render(out);
                out.push_str("</Connect>");
            }
            Verb::Dial(dial) => dial.render(out),
            Verb::Refer(refer) => refer.render(out),
            Verb::Say(say) => say.render(out),
            Verb::PlayDigits(digits) => element(out, "Play", &[("digits", Some(digits))], None),
            Verb::Hangup => out.push_str("<Hangup/>"),
        }
    }
}

/// `<Stream>` inside `<Connect>`. With `<Connect>` only the inbound track is streamed, so
/// there is no `track` attribute here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    url: String,
    name: Option<String>,
    status_callback: Option<String>,
    status_callback_method: Option<String>,
    parameters: Vec<(String, String)>,
}

impl Stream {
    /// A stream to `url`: absolute `wss://…` or relative; no query string.
    ///
    /// # Errors
    /// [`TwimlError::StreamUrlQuery`] if `url` contains `?`; [`TwimlError::StreamUrlScheme`] if it
    /// is absolute with a scheme other than `wss`.
    pub fn new(url: impl Into<String>) -> Result<Self, TwimlError> {
        let url = url.into();
        if url.contains('?') {
            return Err(TwimlError::StreamUrlQuery(url));
        }
        let scheme_ok = url
            .split_once("://")
            .is_none_or(|(scheme, _)| scheme.eq_ignore_ascii_case("wss"));
        if !scheme_ok {
            return Err(TwimlError::StreamUrlScheme(url));
        }
        Ok(Self {
            url,
            name: None,
            status_callback: None,
            status_callback_method: None,
            parameters: Vec::new(),
        })
    }

    /// `name`: unique per call.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// `statusCallback` (absolute URL) and `statusCallbackMethod` (`GET` or `POST`; Twilio's
    /// default is `POST`, omitted when `None`).
    pub fn status_callback(mut self, url: impl Into<String>, method: Option<&str>) -> Self {
        self.status_callback = Some(url.into());
        self.status_callback_method = method.map(str::to_string);
        self
    }

    /// Adds `<Parameter name value/>`; delivered once, in the `start` message's
    /// `customParameters`.
    ///
    /// # Errors
    /// [`TwimlError::EmptyParameterName`]; [`TwimlError::ParameterTooLong`] when name plus value
    /// has 500 characters or more.
    pub fn parameter(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, TwimlError> {
        let (name, value) = (name.into(), value.into());
        if name.is_empty() {
            return Err(TwimlError::EmptyParameterName);
        }
        let len = name.chars().count() + value.chars().count();
        if len >= PARAMETER_MAX_CHARS {
            return Err(TwimlError::ParameterTooLong(len));
        }
        self.parameters.push((name, value));
        Ok(self)
    }

    fn render(&self, out: &mut String) {
        let attrs = [
            ("url", Some(&self.url)),
            ("name", self.name.as_ref()),
            ("statusCallback", self.status_callback.as_ref()),
            ("statusCallbackMethod", self.status_callback_method.as_ref()),
        ];
        if self.parameters.is_empty() {
            element(out, "Stream", &attrs, None);
            return;
        }
        open(out, "Stream", &attrs);
        for (name, value) in &self.parameters {
            element(
                out,
                "Parameter",
                &[("name", Some(name)), ("value", Some(value))],
                None,
            );
        }
        out.push_str("</Stream>");
    }
}

/// `<Dial>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    caller_id: Option<String>,
    timeout: Option<u32>,
    answer_on_bridge: Option<bool>,
    action: Option<String>,
    targets: Vec<DialTarget>,
}

/// A noun inside `<Dial>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialTarget {
    /// `<Number>`.
    Number(Number),
    /// `<Sip>`.
    Sip(SipTarget),
}

impl From<Number> for DialTarget {
    fn from(n: Number) -> Self {
        Self::Number(n)
    }
}

impl From<SipTarget> for DialTarget {
    fn from(s: SipTarget) -> Self {
        Self::Sip(s)
    }
}

impl Dial {
    /// `<Dial>` with one target; add more (they ring simultaneously, up to 10 `<Number>`s) with
    /// [`Dial::target`].
    pub fn new(target: impl Into<DialTarget>) -> Self {
        Self {
            caller_id: None,
            timeout: None,
            answer_on_bridge: None,
            action: None,
            targets: vec![target.into()],
        }
    }

    /// Adds another target.
    pub fn target(mut self, target: impl Into<DialTarget>) -> Self {
        self.targets.push(target.into());
        self
    }

    /// `callerId`: a Twilio or verified number; for inbound SIP calls not the From/To.
    pub fn caller_id(mut self, caller_id: impl Into<String>) -> Self {
        self.caller_id = Some(caller_id.into());
        self
    }

    /// `timeout` in seconds of ringing (Twilio's default 30).
    pub fn timeout(mut self, seconds: u32) -> Self {
        self.timeout = Some(seconds);
        self
    }

    /// `answerOnBridge`: keep the inbound leg ringing until the callee answers.
    pub fn answer_on_bridge(mut self, on: bool) -> Self {
        self.answer_on_bridge = Some(on);
        self
    }

    /// `action`: URL requested with `DialCallStatus` etc. when the dialed call ends; without it the
    /// next verb runs.
    pub fn action(mut self, url: impl Into<String>) -> Self {
        self.action = Some(url.into());
        self
    }

    fn render(&self, out: &mut String) {
        let timeout = self.timeout.map(|t| t.to_string());
        let bridge = self.answer_on_bridge.map(|b| b.to_string());
        open(
            out,
            "Dial",
            &[
                ("answerOnBridge", bridge.as_ref()),
                ("timeout", timeout.as_ref()),
                ("callerId", self.caller_id.as_ref()),
                ("action", self.action.as_ref()),
            ],
        );
        for target in &self.targets {
            match target {
                DialTarget::Number(n) => element(
                    out,
                    "Number",
                    &[("sendDigits", n.send_digits.as_ref())],
                    Some(&n.number),
                ),
                DialTarget::Sip(s) => element(out, "Sip", &[], Some(&s.render_uri())),
            }
        }
        out.push_str("</Dial>");
    }
}

/// `<Number>`: a PSTN number, optionally with DTMF played when it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    number: String,
    send_digits: Option<String>,
}

impl Number {
    /// An E.164 number (`+14155550123`).
    ///
    /// # Errors
    /// [`TwimlError::InvalidNumber`].
    pub fn new(e164: impl Into<String>) -> Result<Self, TwimlError> {
        let number = e164.into();
        crate::sip::E164::parse(&number).map_err(|_| TwimlError::InvalidNumber(number.clone()))?;
        Ok(Self {
            number,
            send_digits: None,
        })
    }

    /// `sendDigits`: DTMF played when the far end answers; `w` pauses 0.5 s, `W` 1 s. Lead with
    /// pauses when the far end is an IVR that greets first (`<Number sendDigits>` timing caveat).
    ///
    /// # Errors
    /// [`TwimlError::InvalidDigits`].
    pub fn send_digits(mut self, digits: impl Into<String>) -> Result<Self, TwimlError> {
        self.send_digits = Some(checked_digits(digits.into())?);
        Ok(self)
    }
}

/// A `<Sip>` target with custom headers carried as SIP URI headers:
/// `sip:alice@example.com?X-AcctNumber=123456&User-to-User=…` (the `&` is escaped as `&amp;` in
/// the XML).
///
/// Twilio documents this form for `<Refer><Sip>` (<https://www.twilio.com/docs/voice/twiml/refer>:
/// headers are passed as SIP-URI headers in the `<Sip>` target). For `<Dial><Sip>` the voice
/// webhook docs only say that `X-` headers of *incoming* SIP-domain calls arrive as
/// `SipHeader_<name>` (<https://www.twilio.com/docs/voice/api/sip-twiml>); that `<Dial><Sip>` sends
/// URI headers the same way is Twilio's `<Sip>` noun documentation
/// (<https://www.twilio.com/docs/voice/twiml/sip>) as we know it, **[unverified]**. Header values
/// are percent-encoded except for RFC 3261 `unreserved` and `hnv-unreserved` characters, as in
/// Twilio's `<Refer>` example (`%3B` for `;`, `%3D` for `=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTarget {
    uri: String,
    headers: Vec<(String, String)>,
}

impl SipTarget {
    /// A `sip:` or `sips:` URI without a `?` header part.
    ///
    /// # Errors
    /// [`TwimlError::InvalidSipUri`].
    pub fn new(uri: impl Into<String>) -> Result<Self, TwimlError> {
        let uri = uri.into();
        let rest = match uri.split_once(':') {
            Some((scheme, rest))
                if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") =>
            {
                rest
            }
            _ => "",
        };
        if rest.is_empty() || uri.contains('?') {
            return Err(TwimlError::InvalidSipUri(uri));
        }
        Ok(Self {
            uri,
            headers: Vec::new(),
        })
    }

    /// Adds a header: `X-<token>` or `User-to-User` (any case). The value is percent-encoded.
    ///
    /// # Errors
    /// [`TwimlError::InvalidSipHeader`] for other names.
    pub fn header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, TwimlError> {
        let name = name.into();
        let lower = name.to_ascii_lowercase();
        let allowed = (lower.starts_with("x-") && name.len() > 2) || lower == "user-to-user";
        if !allowed || !name.bytes().all(is_token_byte) {
            return Err(TwimlError::InvalidSipHeader(name));
        }
        self.headers.push((name, value.into()));
        Ok(self)
    }

    /// The URI with its headers, before XML escaping, e.g.
    /// `sip:alice@example.com?X-A=1&User-to-User=12%3Bencoding%3Dhex`.
    pub fn render_uri(&self) -> String {
        let mut out = self.uri.clone();
        for (i, (name, value)) in self.headers.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(name);
            out.push('=');
            percent_encode_hvalue(value, &mut out);
        }
        out
    }
}

/// RFC 3261 `token` characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// RFC 3261 `hvalue = *( hnv-unreserved / unreserved / escaped )`.
fn percent_encode_hvalue(value: &str, out: &mut String) {
    for &b in value.as_bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-_.!~*'()[]/?:+$".contains(&b);
        if keep {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// `<Refer>`: Twilio sends a SIP REFER on a SIP leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refer {
    target: SipTarget,
    action: Option<String>,
    method: Option<String>,
}

impl Refer {
    /// A REFER to `target`.
    pub fn new(target: SipTarget) -> Self {
        Self {
            target,
            action: None,
            method: None,
        }
    }

    /// `action` URL (gets `ReferCallStatus`, `ReferSipResponseCode`, `NotifySipResponseCode`) and
    /// `method` (Twilio's default `POST`, omitted when `None`).
    pub fn action(mut self, url: impl Into<String>, method: Option<&str>) -> Self {
        self.action = Some(url.into());
        self.method = method.map(str::to_string);
        self
    }

    fn render(&self, out: &mut String) {
        open(
            out,
            "Refer",
            &[
                ("action", self.action.as_ref()),
                ("method", self.method.as_ref()),
            ],
        );
        element(out, "Sip", &[], Some(&self.target.render_uri()));
        out.push_str("</Refer>");
    }
}

/// `<Say>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Say {
    text: String,
    voice: Option<String>,
    language: Option<String>,
}

impl Say {
    /// Text to speak.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            voice: None,
            language: None,
        }
    }

    /// `voice`, e.g. `alice` or `Polly.Joanna`.
    pub fn voice(mut self, voice: impl Into<String>) -> Self {
        self.voice = Some(voice.into());
        self
    }

    /// `language`, e.g. `en-US`.
    pub fn language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    fn render(&self, out: &mut String) {
        element(
            out,
            "Say",
            &[
                ("voice", self.voice.as_ref()),
                ("language", self.language.as_ref()),
            ],
            Some(&self.text),
        );
    }
}

/// Validates DTMF digits: non-empty, only `0-9`, `A`-`D`, `*`, `#`, `w`, `W`.
fn checked_digits(digits: String) -> Result<String, TwimlError> {
    let ok = !digits.is_empty()
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || b"ABCD*#wW".contains(&b));
    if ok {
        Ok(digits)
    } else {
        Err(TwimlError::InvalidDigits(digits))
    }
}

fn open(out: &mut String, name: &str, attrs: &[(&str, Option<&String>)]) {
    out.push('<');
    out.push_str(name);
    attributes(out, attrs);
    out.push('>');
}

/// `<name attrs>text</name>`, or `<name attrs/>` without text.
fn element(out: &mut String, name: &str, attrs: &[(&str, Option<&String>)], text: Option<&str>) {
    out.push('<');
    out.push_str(name);
    attributes(out, attrs);
    match text {
        Some(text) => {
            out.push('>');
            escape_into(text, false, out);
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
        None => out.push_str("/>"),
    }
}

fn attributes(out: &mut String, attrs: &[(&str, Option<&String>)]) {
    for (name, value) in attrs {
        if let Some(value) = value {
            out.push(' ');
            out.push_str(name);
            out.push_str("=\"");
            escape_into(value, true, out);
            out.push('"');
        }
    }
}

/// Escapes `s` for a double-quoted XML attribute value (also valid as element text): `&<>"'`,
/// tab, line feed and carriage return as character references; forbidden controls dropped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(s, true, &mut out);
    out
}

fn escape_into(s: &str, attribute: bool, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // A raw CR is read back as LF (XML 1.0 §2.11), in text as in attributes.
            '\t' | '\n' if attribute => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found while writing the `twiml` fuzz target's properties: a carriage return in `<Say>`
    /// text was written raw, and XML end-of-line handling (XML 1.0 §2.11) reads it back as a
    /// line feed.
    #[test]
    fn carriage_return_survives_in_text_and_attributes() {
        let xml = Response::new()
            .verb(Verb::Say(Say::new("a\rb\r\nc\td\ne").voice("x\ry")))
            .render();
        assert_eq!(
            xml,
            format!(
                "{XML_DECLARATION}<Response><Say voice=\"x&#13;y\">a&#13;b&#13;\nc\td\ne</Say>\
                 </Response>"
            )
        );
        assert_eq!(escape("\t\n\r"), "&#9;&#10;&#13;");
    }
}
