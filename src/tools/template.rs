//! Templates in tool definitions and SMS follow-ups: literal text with `{{...}}` placeholders.
//!
//! | placeholder | value | allowed in |
//! |---|---|---|
//! | `{{args.NAME}}` | the model's argument `NAME` (strings as is, numbers and booleans as text, objects and arrays as JSON, missing or `null` as empty) | tool `url`, `headers`, `body` |
//! | `{{call.id}}`, `{{call.caller}}`, `{{call.dialed}}` | the OpenAI call id, the caller's and the dialed number in E.164 (empty when unknown) | tool `url`, `headers`, `body`; SMS |
//! | `{{base_url}}` | the profile's `tools_base_url`, inserted unencoded | tool `url` |
//! | `{{secret:NAME}}` | the named secret ([`crate::config::Secrets::named`]) | tool `headers` only |
//! | `{{summary.intent}}`, `{{summary.outcome}}` | the call summary | SMS |
//! | `{{extract.NAME}}` | a value extracted from the transcript by the rule `NAME` | SMS |
//!
//! Whitespace inside the braces is ignored (`{{ args.id }}`). There is no escape for a literal
//! `{{`. In a URL every substituted value except `{{base_url}}` is percent-encoded (everything
//! but `A-Z a-z 0-9 - . _ ~`), so an argument cannot add path segments or query parameters, and
//! [`Template::render_url`] refuses a value that would make a `.` or `..` path segment (URL
//! parsers remove those, which would move the request to another path).

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// Characters percent-encoded in URL substitutions: all but RFC 3986 unreserved.
const URL_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A field of the call usable in templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallField {
    /// `{{call.id}}`: OpenAI's call id.
    Id,
    /// `{{call.caller}}`: the caller's number, E.164.
    Caller,
    /// `{{call.dialed}}`: the dialed number, E.164.
    Dialed,
}

/// A field of the call summary usable in SMS templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryField {
    /// `{{summary.intent}}`.
    Intent,
    /// `{{summary.outcome}}`.
    Outcome,
}

/// One piece of a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal text.
    Lit(String),
    /// `{{args.NAME}}`.
    Arg(String),
    /// `{{call.FIELD}}`.
    Call(CallField),
    /// `{{base_url}}`.
    BaseUrl,
    /// `{{secret:NAME}}`.
    Secret(String),
    /// `{{summary.FIELD}}`.
    Summary(SummaryField),
    /// `{{extract.NAME}}`.
    Extract(String),
}

impl Segment {
    /// The placeholder kind for error messages: `args`, `call`, `base_url`, `secret`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Segment::Lit(_) => "text",
            Segment::Arg(_) => "args",
            Segment::Call(_) => "call",
            Segment::BaseUrl => "base_url",
            Segment::Secret(_) => "secret",
            Segment::Summary(_) => "summary",
            Segment::Extract(_) => "extract",
        }
    }
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// Values a template is rendered with. Missing values render as empty text.
pub trait Values {
    /// The argument `name`, if given.
    fn arg(&self, _name: &str) -> Option<&Value> {
        None
    }
    /// A call field.
    fn call(&self, _field: CallField) -> Option<&str> {
        None
    }
    /// The profile's tools base URL.
    fn base_url(&self) -> Option<&str> {
        None
    }
    /// A resolved secret value.
    fn secret(&self, _name: &str) -> Option<&str> {
        None
    }
    /// A summary field.
    fn summary(&self, _field: SummaryField) -> Option<&str> {
        None
    }
    /// An extracted value.
    fn extract(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// How substituted values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Percent-encode substitutions (except `{{base_url}}`).
    Url,
    /// Insert as is.
    Raw,
}

/// A template that does not parse, or a URL that [`Template::render_url`] refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateError {}

/// True for a placeholder name: 1-64 of `A-Z a-z 0-9 _ - .`, not starting with `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

impl Template {
    /// Parses `text`.
    ///
    /// # Errors
    /// An unclosed `{{`, an empty or unknown placeholder, or a bad name.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                segments.push(Segment::Lit(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| {
                TemplateError(format!(
                    "unclosed {{{{ in {text:?} (placeholders end with }}}})"
                ))
            })?;
            segments.push(placeholder(after[..end].trim())?);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Lit(rest.to_string()));
        }
        Ok(Template { segments })
    }

    /// The segments in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The names of the `{{args.NAME}}` placeholders.
    pub fn args(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Arg(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// The names of the `{{secret:NAME}}` placeholders.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Secret(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// True when the template has no placeholder at all.
    pub fn is_literal(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Lit(_)))
    }

    /// `Some(NAME)` when the whole template is exactly `{{args.NAME}}` (a JSON body value then
    /// takes the argument's JSON value instead of its text).
    pub fn single_arg(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [Segment::Arg(n)] => Some(n),
            _ => None,
        }
    }

    /// Renders with `values`; missing values are empty.
    pub fn render(&self, values: &dyn Values, encoding: Encoding) -> String {
        let mut out = String::new();
        for seg in &self.segments {
            push_segment(seg, values, encoding, &mut out);
        }
        out
    }

    /// Renders a URL ([`Encoding::Url`]), refusing it when a substituted value (anything but
    /// literal text and `{{base_url}}`) is part of a path segment that is `.` or `..`. URL
    /// parsers remove such segments (RFC 3986 §5.2.4; the WHATWG URL Standard, which `reqwest`
    /// follows, also reads `%2e` as `.`), so percent-encoding cannot neutralise them: with
    /// `{{base_url}}/orders/{{args.id}}/items`, the argument `..` would send the request to
    /// `{{base_url}}/items`.
    ///
    /// # Errors
    /// [`TemplateError`] naming the placeholder and the segment.
    pub fn render_url(&self, values: &dyn Values) -> Result<String, TemplateError> {
        let mut out = String::new();
        let mut substituted = Vec::new();
        for seg in &self.segments {
            let start = out.len();
            push_segment(seg, values, Encoding::Url, &mut out);
            if !matches!(seg, Segment::Lit(_) | Segment::BaseUrl) {
                substituted.push((start, out.len(), seg));
            }
        }
        // Substituted values never contain '?', '#', '/' or '\\' (they are percent-encoded).
        let path_end = out.find(['?', '#']).unwrap_or(out.len());
        for (start, end, seg) in substituted {
            if start >= path_end {
                break;
            }
            let from = out[..start].rfind(['/', '\\']).map_or(0, |i| i + 1);
            let to = out[end..]
                .find(['/', '\\', '?', '#'])
                .map_or(out.len(), |i| end + i);
            let segment = &out[from..to];
            let dots = segment.to_ascii_lowercase().replace("%2e", ".");
            if dots == "." || dots == ".." {
                return Err(TemplateError(format!(
                    "the {} placeholder would make the URL path segment {segment:?}, which URL \
                     parsers remove",
                    seg.kind()
                )));
            }
        }
        Ok(out)
    }
}

/// Appends one segment's text to `out`: literal text and `{{base_url}}` as they are, other
/// values encoded per `encoding`; missing values are empty.
fn push_segment(seg: &Segment, values: &dyn Values, encoding: Encoding, out: &mut String) {
    let text: std::borrow::Cow<'_, str> = match seg {
        Segment::Lit(s) => return out.push_str(s),
        Segment::BaseUrl => return out.push_str(values.base_url().unwrap_or_default()),
        Segment::Arg(n) => arg_text(values.arg(n)).into(),
        Segment::Call(f) => values.call(*f).unwrap_or_default().into(),
        Segment::Secret(n) => values.secret(n).unwrap_or_default().into(),
        Segment::Summary(f) => values.summary(*f).unwrap_or_default().into(),
        Segment::Extract(n) => values.extract(n).unwrap_or_default().into(),
    };
    match encoding {
        Encoding::Raw => out.push_str(&text),
        Encoding::Url => out.extend(utf8_percent_encode(&text, URL_ENCODE)),
    }
}

/// An argument as text: strings as is, `null`/missing as empty, anything else as JSON.
pub fn arg_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn placeholder(inner: &str) -> Result<Segment, TemplateError> {
    let named = |name: &str, kind: &str| {
        if valid_name(name) {
            Ok(name.to_string())
        } else {
            Err(TemplateError(format!(
                "{{{{{kind}{name}}}}}: the name must be 1-64 of A-Z a-z 0-9 _ - ."
            )))
        }
    };
    if let Some(name) = inner.strip_prefix("args.") {
        return Ok(Segment::Arg(named(name, "args.")?));
    }
    if let Some(name) = inner.strip_prefix("secret:") {
        return Ok(Segment::Secret(named(name, "secret:")?));
    }
    if let Some(name) = inner.strip_prefix("extract.") {
        return Ok(Segment::Extract(named(name, "extract.")?));
    }
    Ok(match inner {
        "call.id" => Segment::Call(CallField::Id),
        "call.caller" => Segment::Call(CallField::Caller),
        "call.dialed" => Segment::Call(CallField::Dialed),
        "base_url" => Segment::BaseUrl,
        "summary.intent" => Segment::Summary(SummaryField::Intent),
        "summary.outcome" => Segment::Summary(SummaryField::Outcome),
        "" => return Err(TemplateError("empty placeholder {{}}".into())),
        other => {
            return Err(TemplateError(format!(
                "unknown placeholder {{{{{other}}}}} (known: args.NAME, call.id, call.caller, \
                 call.dialed, base_url, secret:NAME, summary.intent, summary.outcome, extract.NAME)"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct V(Value);
    impl Values for V {
        fn arg(&self, name: &str) -> Option<&Value> {
            self.0.get(name)
        }
        fn call(&self, f: CallField) -> Option<&str> {
            (f == CallField::Caller).then_some("+14155550123")
        }
        fn base_url(&self) -> Option<&str> {
            Some("http://127.0.0.1:9/api")
        }
        fn secret(&self, name: &str) -> Option<&str> {
            (name == "tok").then_some("s3cr3t")
        }
    }

    #[test]
    fn parses_and_renders() {
        let t = Template::parse("{{base_url}}/orders/{{ args.id }}?c={{call.caller}}").unwrap();
        assert_eq!(t.args().collect::<Vec<_>>(), ["id"]);
        let v = V(json!({"id": "A/1 ?x=y"}));
        assert_eq!(
            t.render(&v, Encoding::Url),
            "http://127.0.0.1:9/api/orders/A%2F1%20%3Fx%3Dy?c=%2B14155550123"
        );
        let h = Template::parse("Bearer {{secret:tok}}").unwrap();
        assert_eq!(h.secrets().collect::<Vec<_>>(), ["tok"]);
        assert_eq!(h.render(&v, Encoding::Raw), "Bearer s3cr3t");
        let n = Template::parse("{{args.n}}").unwrap();
        assert_eq!(n.single_arg(), Some("n"));
        assert_eq!(n.render(&V(json!({"n": 5})), Encoding::Raw), "5");
        assert_eq!(n.render(&V(json!({})), Encoding::Raw), "");
        assert!(Template::parse("plain").unwrap().is_literal());
    }

    /// Found while writing the `tool_template` fuzz target's properties: an argument `.` or `..`
    /// in a path segment survived percent-encoding and the URL parser removed the segment,
    /// moving the request.
    #[test]
    fn a_dot_segment_argument_cannot_move_the_request() {
        let t = Template::parse("{{base_url}}/orders/{{args.id}}/items?q={{args.q}}").unwrap();
        for id in [".", "..", "%2e", "%2E%2e"] {
            let v = V(json!({ "id": id, "q": "x" }));
            let rendered = t.render_url(&v);
            if id.starts_with('%') {
                // '%' is encoded (`%252e`): an ordinary segment.
                let url = rendered.unwrap();
                assert!(url.contains("/orders/%252"), "{url}");
            } else {
                let e = rendered.unwrap_err();
                assert!(e.0.contains("args placeholder"), "{e}");
            }
        }
        // Dots elsewhere are fine: in a longer segment, in the query.
        for (id, q) in [("...", ".."), ("a..", "."), (".a", "..")] {
            let url = t.render_url(&V(json!({ "id": id, "q": q }))).unwrap();
            let parsed = reqwest::Url::parse(&url).unwrap();
            let segments: Vec<&str> = parsed.path_segments().unwrap().collect();
            assert_eq!(segments, ["api", "orders", id, "items"], "{url}");
        }
        // A literal dot next to a substituted one is caught too.
        let t = Template::parse("{{base_url}}/x/.{{args.id}}/y").unwrap();
        assert!(t.render_url(&V(json!({ "id": "." }))).is_err());
        assert!(t.render_url(&V(json!({ "id": "b" }))).is_ok());
    }

    #[test]
    fn rejects_bad_placeholders() {
        for bad in [
            "{{args.id",
            "{{}}",
            "{{env:HOME}}",
            "{{args.}}",
            "{{secret:a b}}",
            "{{call.name}}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
