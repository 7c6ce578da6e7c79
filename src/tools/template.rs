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
//! `{{`. In a URL ([`Template::render_url`]) every substituted value except `{{base_url}}` is
//! percent-encoded (everything but `A-Z a-z 0-9 - . _ ~`, RFC 3986 §2.3), so an argument is one
//! path segment or one query value: `/`, `?`, `#`, `&`, `=`, `@` and `%` are encoded. A value
//! that would make a whole path segment `.` or `..` (which URL parsers remove together with the
//! segment before it, WHATWG URL Standard "path state", also in the `%2e` forms) is refused.
//!
//! Where the request goes is never up to a substituted value: [`Template::check_url_authority`]
//! (run by `voxmachina check` and profile loading) requires the scheme, user, host and port to
//! be literal text or `{{base_url}}` (the operator's `tools_base_url`), closed by `/`, `?` or `#`
//! before the first other placeholder, and `{{base_url}}` to be followed by `/`, `?`, `#` or the
//! end of the url.

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

impl Segment {
    /// The placeholder as written, without braces (`args.host`, `call.caller`, `base_url`,
    /// `secret:NAME`); literal text is `text`.
    pub fn label(&self) -> String {
        match self {
            Segment::Lit(_) => "text".into(),
            Segment::Arg(n) => format!("args.{n}"),
            Segment::Call(CallField::Id) => "call.id".into(),
            Segment::Call(CallField::Caller) => "call.caller".into(),
            Segment::Call(CallField::Dialed) => "call.dialed".into(),
            Segment::BaseUrl => "base_url".into(),
            Segment::Secret(n) => format!("secret:{n}"),
            Segment::Summary(SummaryField::Intent) => "summary.intent".into(),
            Segment::Summary(SummaryField::Outcome) => "summary.outcome".into(),
            Segment::Extract(n) => format!("extract.{n}"),
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

    /// Checks that no placeholder but `{{base_url}}` (whose value `base_url` is the profile's
    /// `tools_base_url`) can reach the scheme, user info, host or port of this URL template, and
    /// that `{{base_url}}` is followed by a `/`, `?`, `#` boundary or ends the template.
    ///
    /// # Errors
    /// A message naming the placeholder and what it could change.
    pub fn check_url_authority(&self, base_url: Option<&str>) -> Result<(), TemplateError> {
        let mut prefix = String::new();
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Lit(l) => prefix.push_str(l),
                Segment::BaseUrl => {
                    prefix.push_str(base_url.unwrap_or("http://base_url/"));
                    let bounded = match self.segments.get(i + 1) {
                        None => true,
                        Some(Segment::Lit(l)) => l.starts_with(['/', '?', '#']),
                        Some(_) => false,
                    };
                    if !bounded {
                        return Err(TemplateError(
                            "{{base_url}} must be followed by '/', '?', '#' or the end of the url, \
                             so no placeholder can extend its host name or last path segment \
                             (write {{base_url}}/{{args.NAME}})"
                                .into(),
                        ));
                    }
                }
                other => {
                    let closed = prefix
                        .find("://")
                        .is_some_and(|at| prefix[at + 3..].contains(['/', '?', '#', '\\']));
                    if !closed {
                        return Err(TemplateError(format!(
                            "{{{{{}}}}} could choose the scheme, user, host or port of the url: \
                             only literal text and {{{{base_url}}}} may come before the '/' that \
                             ends `scheme://host[:port]` (arguments and call fields go in path \
                             segments and query values)",
                            other.label()
                        )));
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Renders a URL template with `values`: substitutions (except `{{base_url}}`, inserted as
    /// is) are percent-encoded into one path segment or one query value each.
    ///
    /// # Errors
    /// When a substituted value makes a whole path segment `.` or `..` (or a `%2e` form of
    /// them), which would remove a segment of the path instead of naming one.
    pub fn render_url(&self, values: &dyn Values) -> Result<String, TemplateError> {
        let mut substituted: Vec<(std::ops::Range<usize>, String)> = Vec::new();
        let out = self.render_with(values, |out, seg, text| {
            let start = out.len();
            out.extend(utf8_percent_encode(text, URL_ENCODE));
            substituted.push((start..out.len(), seg.label()));
        });
        let path_start = out
            .find("://")
            .and_then(|at| out[at + 3..].find('/').map(|p| at + 3 + p))
            .unwrap_or(out.len());
        let path_end = out[path_start..]
            .find(['?', '#'])
            .map_or(out.len(), |p| path_start + p);
        let mut seg_start = path_start;
        for seg in out[path_start..path_end].split('/') {
            let range = seg_start..seg_start + seg.len();
            seg_start = range.end + 1;
            let dots = seg.to_ascii_lowercase().replace("%2e", ".");
            if !matches!(dots.as_str(), "." | "..") {
                continue;
            }
            if let Some((_, label)) = substituted
                .iter()
                .find(|(r, _)| r.start < range.end && range.start < r.end)
            {
                return Err(TemplateError(format!(
                    "{{{{{label}}}}} makes the path segment {seg:?}, which would remove a segment \
                     of the path"
                )));
            }
        }
        Ok(out)
    }

    /// Renders with `values`; missing values are empty.
    pub fn render(&self, values: &dyn Values, encoding: Encoding) -> String {
        self.render_with(values, |out, _, text| match encoding {
            Encoding::Raw => out.push_str(text),
            Encoding::Url => out.extend(utf8_percent_encode(text, URL_ENCODE)),
        })
    }

    /// Literal text and `{{base_url}}` go in as they are; every other placeholder's text is
    /// written by `put` (output so far, the placeholder, its text).
    fn render_with(
        &self,
        values: &dyn Values,
        mut put: impl FnMut(&mut String, &Segment, &str),
    ) -> String {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Lit(s) => out.push_str(s),
                Segment::BaseUrl => out.push_str(values.base_url().unwrap_or_default()),
                other => put(&mut out, other, &value_text(other, values)),
            }
        }
        out
    }
}

/// The text a placeholder stands for (empty for literal text and `{{base_url}}`, which the
/// renderers insert themselves).
fn value_text(seg: &Segment, values: &dyn Values) -> String {
    match seg {
        Segment::Lit(_) | Segment::BaseUrl => String::new(),
        Segment::Arg(n) => arg_text(values.arg(n)),
        Segment::Call(f) => values.call(*f).unwrap_or_default().to_string(),
        Segment::Secret(n) => values.secret(n).unwrap_or_default().to_string(),
        Segment::Summary(f) => values.summary(*f).unwrap_or_default().to_string(),
        Segment::Extract(n) => values.extract(n).unwrap_or_default().to_string(),
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

    #[test]
    fn url_authority_is_fixed_text() {
        let check =
            |t: &str, base: Option<&str>| Template::parse(t).unwrap().check_url_authority(base);
        for bad in [
            "http://{{args.host}}/x",
            "{{args.url}}",
            "https://api.example.com{{args.path}}",
            "https://api.example.com:{{args.port}}/x",
            "https://{{args.user}}@api.example.com/x",
            "http{{args.s}}://api.example.com/x",
            "https://api.example.com.{{call.caller}}/x",
        ] {
            let e = check(bad, None).unwrap_err().0;
            assert!(e.contains("scheme, user, host or port"), "{bad}: {e}");
        }
        for bad in [
            "{{base_url}}{{args.x}}",
            "{{base_url}}.evil.example/x",
            "{{base_url}}x",
        ] {
            let e = check(bad, Some("https://api.example.com")).unwrap_err().0;
            assert!(e.contains("{{base_url}} must be followed by"), "{bad}: {e}");
        }
        for good in [
            "https://api.example.com/orders/{{args.id}}",
            "https://api.example.com?q={{args.q}}",
            "https://api.example.com/x#{{args.f}}",
            "{{base_url}}/orders/{{args.id}}?c={{call.caller}}",
            "{{base_url}}",
            "{{base_url}}?q={{args.q}}",
        ] {
            check(good, Some("https://api.example.com/v1")).unwrap();
        }
    }

    #[test]
    fn url_arguments_are_one_segment_or_one_value() {
        let t = Template::parse("{{base_url}}/orders/{{args.id}}/items?q={{args.q}}").unwrap();
        let render = |id: &str, q: &str| t.render_url(&V(json!({"id": id, "q": q})));
        assert_eq!(
            render("a/../b", "x&admin=1#f").unwrap(),
            "http://127.0.0.1:9/api/orders/a%2F..%2Fb/items?q=x%26admin%3D1%23f"
        );
        assert_eq!(
            render("@evil?#", "").unwrap(),
            "http://127.0.0.1:9/api/orders/%40evil%3F%23/items?q="
        );
        assert_eq!(
            render("%2e%2e", "..").unwrap(),
            "http://127.0.0.1:9/api/orders/%252e%252e/items?q=.."
        );
        assert_eq!(
            render("...", "").unwrap(),
            "http://127.0.0.1:9/api/orders/.../items?q="
        );
        for dots in ["..", "."] {
            let e = render(dots, "").unwrap_err().0;
            assert!(e.contains("{{args.id}} makes the path segment"), "{e}");
        }
        let tail = Template::parse("{{base_url}}/orders/{{args.id}}").unwrap();
        assert!(tail.render_url(&V(json!({"id": ".."}))).is_err());
        let parsed = reqwest::Url::parse(&render("../../admin", "").unwrap()).unwrap();
        assert_eq!(parsed.path(), "/api/orders/..%2F..%2Fadmin/items");
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
