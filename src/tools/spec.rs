//! Tool definitions: the `[[tools]]` entries of a profile as written ([`RawTool`]) and as loaded
//! and validated ([`ToolDef`], [`ToolSet`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use toml::Spanned;

use super::builtin::Builtin;
use super::egress::{self, Allowlist};
use super::template::{Segment, Template};

/// Largest `timeout_ms` a tool may set (one minute).
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// `[[tools]]` as written in the profile TOML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTool {
    pub name: Option<Spanned<String>>,
    pub builtin: Option<Spanned<String>>,
    pub description: Option<Spanned<String>>,
    pub parameters: Option<Spanned<toml::Value>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub filler: Option<Spanned<String>>,
    pub http: Option<Spanned<RawHttp>>,
}

/// `[tools.http]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub method: Option<Spanned<String>>,
    pub url: Spanned<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    pub body: Option<Spanned<toml::Value>>,
    pub response: Option<Spanned<RawResponse>>,
}

/// `[tools.http.response]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResponse {
    pub pointer: Option<Spanned<String>>,
    #[serde(default)]
    pub fields: Vec<Spanned<String>>,
    pub max_bytes: Option<Spanned<u64>>,
}

/// A validated tool of a profile.
#[derive(Debug)]
pub struct ToolDef {
    /// The function name the model calls (`^[A-Za-z0-9_-]{1,64}$`, unique in the profile).
    pub name: String,
    /// What the model reads to decide when to call it.
    pub description: String,
    /// The JSON Schema of the arguments (an object schema).
    pub parameters: Value,
    /// What runs.
    pub kind: ToolKind,
    /// `timeout_ms`; `None` = `[tools] default_timeout_ms`.
    pub timeout: Option<Duration>,
    /// `filler`: the line spoken when this tool runs long; `None` = the profile's or config's.
    pub filler: Option<String>,
    validator: jsonschema::Validator,
}

/// What a tool runs.
#[derive(Debug)]
pub enum ToolKind {
    /// An HTTP request built from templates.
    Http(HttpSpec),
    /// A built-in of the controller.
    Builtin(Builtin),
}

/// `[tools.http]`, validated.
#[derive(Debug)]
pub struct HttpSpec {
    /// `GET` (default), `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: reqwest::Method,
    /// URL template (percent-encoding substitutions except `{{base_url}}`).
    pub url: Template,
    /// Header name and value template, in name order. Values may use `{{secret:NAME}}`.
    pub headers: Vec<(reqwest::header::HeaderName, Template)>,
    /// JSON body template, sent with `Content-Type: application/json`.
    pub body: Option<BodyTemplate>,
    /// How the answer becomes the model's `function_call_output`.
    pub response: ResponseMapping,
    /// The profile's `tools_allow_private_hosts`: hosts this tool may reach even when they are
    /// (or resolve to) loopback, private, link-local or other refused addresses
    /// ([`super::egress`]).
    pub allow_private_hosts: Allowlist,
}

/// A JSON body whose strings are templates. A string that is exactly `{{args.NAME}}` takes the
/// argument's JSON value (a number stays a number); a missing argument drops the object key (or
/// is `null` in an array).
#[derive(Debug, Clone, PartialEq)]
pub enum BodyTemplate {
    /// A JSON value without strings to render (null, bool, number).
    Const(Value),
    /// A string template.
    Text(Template),
    /// An array.
    Array(Vec<BodyTemplate>),
    /// An object, keys literal.
    Object(Vec<(String, BodyTemplate)>),
}

/// `[tools.http.response]`: selection and size limit applied to a 2xx JSON answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseMapping {
    /// RFC 6901 JSON pointer selecting part of the answer (`/data/order`); `None` = all of it.
    pub pointer: Option<String>,
    /// Keys kept from the selected object (or from each object of a selected array); empty =
    /// all keys.
    pub fields: Vec<String>,
    /// Largest output in bytes of JSON; `None` = `[tools] max_output_bytes`.
    pub max_bytes: Option<usize>,
}

impl ToolDef {
    /// Checks the model's `arguments` JSON string against [`ToolDef::parameters`].
    ///
    /// # Errors
    /// The problems, one line each (`/order_id: "12" is too short`), or a single line saying the
    /// text is not a JSON object.
    pub fn check_arguments(&self, arguments: &str) -> Result<Value, Vec<String>> {
        let text = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        let value: Value = serde_json::from_str(text)
            .map_err(|e| vec![format!("the arguments are not valid JSON: {e}")])?;
        let problems: Vec<String> = self
            .validator
            .iter_errors(&value)
            .take(10)
            .map(|e| {
                let path = e.instance_path().to_string();
                let path = if path.is_empty() { "/".into() } else { path };
                format!("{path}: {e}")
            })
            .collect();
        if problems.is_empty() {
            Ok(value)
        } else {
            Err(problems)
        }
    }

    /// The function tool object of the session (OpenAPI `RealtimeSessionCreateRequestGA`).
    pub fn session_tool(&self) -> Value {
        json!({
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        })
    }

    /// The `{{secret:NAME}}` names its headers use.
    pub fn secret_names(&self) -> Vec<&str> {
        match &self.kind {
            ToolKind::Http(h) => h.headers.iter().flat_map(|(_, t)| t.secrets()).collect(),
            ToolKind::Builtin(_) => Vec::new(),
        }
    }

    /// The built-in this tool runs, if it is one.
    pub fn builtin(&self) -> Option<Builtin> {
        match &self.kind {
            ToolKind::Builtin(b) => Some(*b),
            ToolKind::Http(_) => None,
        }
    }
}

/// The tools of one profile, in declaration order.
#[derive(Debug, Clone, Default)]
pub struct ToolSet {
    tools: Vec<Arc<ToolDef>>,
}

impl ToolSet {
    /// The tool called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<ToolDef>> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// All declared tools in order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ToolDef>> {
        self.tools.iter()
    }

    /// Number of declared tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// True when the profile declares no tools.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// The session's `tools` array: `builtins` (the always-offered `transfer_to_human` /
    /// `end_call` objects) with descriptions replaced where the profile declares them, then every
    /// other declared tool in order.
    pub fn session_tools(&self, builtins: Vec<Value>) -> Vec<Value> {
        let mut out: Vec<Value> = builtins
            .into_iter()
            .map(|mut b| {
                let name = b["name"].as_str().unwrap_or_default().to_string();
                if let Some(t) = self.get(&name) {
                    b["description"] = json!(t.description);
                }
                b
            })
            .collect();
        let offered: Vec<String> = out
            .iter()
            .filter_map(|b| b["name"].as_str().map(str::to_string))
            .collect();
        out.extend(
            self.tools
                .iter()
                .filter(|t| !offered.contains(&t.name))
                .map(|t| t.session_tool()),
        );
        out
    }
}

/// A problem found while loading tools: byte span in the file (for the line) and message.
pub(crate) type Problem = (Option<Range<usize>>, String);

/// True for an OpenAI function name.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Validates `[[tools]]`. `base_url` is the profile's `tools_base_url`; `allow_private` its
/// `tools_allow_private_hosts` (normalized hosts); `escalation_enabled` says whether
/// `transfer_to_human` exists. Problems are pushed to `problems`; the returned set holds the
/// tools that passed.
pub(crate) fn build_tools(
    raw: Vec<Spanned<RawTool>>,
    base_url: Option<&str>,
    allow_private: &Allowlist,
    escalation_enabled: bool,
    problems: &mut Vec<Problem>,
) -> ToolSet {
    let mut tools: Vec<Arc<ToolDef>> = Vec::new();
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    for entry in raw {
        let span = entry.span();
        let entry = entry.into_inner();
        let before = problems.len();
        let tool = build_tool(
            entry,
            span.clone(),
            (base_url, allow_private),
            escalation_enabled,
            problems,
        );
        if let Some(tool) = tool {
            if seen.insert(tool.name.clone(), ()).is_some() {
                problems.push((
                    Some(span),
                    format!("tools: {:?} is declared twice", tool.name),
                ));
            } else if problems.len() == before {
                tools.push(Arc::new(tool));
            }
        }
    }
    ToolSet { tools }
}

fn build_tool(
    t: RawTool,
    span: Range<usize>,
    (base_url, allow_private): (Option<&str>, &Allowlist),
    escalation_enabled: bool,
    problems: &mut Vec<Problem>,
) -> Option<ToolDef> {
    let mut err =
        |at: Option<Range<usize>>, m: String| problems.push((at.or(Some(span.clone())), m));
    let timeout = match &t.timeout_ms {
        Some(ms) if !(1..=MAX_TIMEOUT_MS).contains(ms.get_ref()) => {
            err(
                Some(ms.span()),
                format!(
                    "tools.timeout_ms {} must be 1..={MAX_TIMEOUT_MS}",
                    ms.get_ref()
                ),
            );
            None
        }
        Some(ms) => Some(Duration::from_millis(*ms.get_ref())),
        None => None,
    };
    let filler = match &t.filler {
        Some(f) if f.get_ref().trim().is_empty() => {
            err(Some(f.span()), "tools.filler must not be empty".into());
            None
        }
        Some(f) => Some(f.get_ref().trim().to_string()),
        None => None,
    };
    let description = match &t.description {
        Some(d) if d.get_ref().trim().is_empty() => {
            err(Some(d.span()), "tools.description must not be empty".into());
            None
        }
        Some(d) => Some(d.get_ref().trim().to_string()),
        None => None,
    };

    match (&t.builtin, &t.http) {
        (Some(_), Some(h)) => {
            err(
                Some(h.span()),
                "a tool has either `builtin` or a [tools.http] table, not both".into(),
            );
            None
        }
        (None, None) => {
            err(
                None,
                "a tool needs `builtin = \"...\"` or a [tools.http] table".into(),
            );
            None
        }
        (Some(b), None) => {
            let builtin = match Builtin::parse(b.get_ref()) {
                Some(x) => x,
                None => {
                    err(
                        Some(b.span()),
                        format!(
                            "tools.builtin {:?} is not one of {}",
                            b.get_ref(),
                            Builtin::ALL
                                .iter()
                                .map(|b| b.name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                    return None;
                }
            };
            if let Some(n) = t.name.as_ref().filter(|n| n.get_ref() != builtin.name()) {
                err(
                    Some(n.span()),
                    format!(
                        "built-in tools keep their name: leave `name` out or write {:?}",
                        builtin.name()
                    ),
                );
            }
            if let Some(p) = &t.parameters {
                err(
                    Some(p.span()),
                    format!("the parameters of built-in {} are fixed", builtin.name()),
                );
            }
            if builtin == Builtin::TransferToHuman && !escalation_enabled {
                err(
                    Some(b.span()),
                    "transfer_to_human needs an enabled [escalation] with a target".into(),
                );
            }
            let parameters = builtin.parameters();
            let validator =
                jsonschema::validator_for(&parameters).expect("built-in schemas are valid");
            Some(ToolDef {
                name: builtin.name().to_string(),
                description: description.unwrap_or_else(|| builtin.description().to_string()),
                parameters,
                kind: ToolKind::Builtin(builtin),
                timeout,
                filler,
                validator,
            })
        }
        (None, Some(h)) => {
            let name = match &t.name {
                Some(n) if !valid_tool_name(n.get_ref()) => {
                    err(
                        Some(n.span()),
                        format!(
                            "tools.name {:?} must be 1-64 of A-Z a-z 0-9 _ -",
                            n.get_ref()
                        ),
                    );
                    return None;
                }
                Some(n) if Builtin::parse(n.get_ref()).is_some() => {
                    err(
                        Some(n.span()),
                        format!(
                            "{:?} is a built-in tool: write `builtin = {:?}` instead of an http tool",
                            n.get_ref(),
                            n.get_ref()
                        ),
                    );
                    return None;
                }
                Some(n) => n.get_ref().clone(),
                None => {
                    err(None, "an http tool needs a `name`".into());
                    return None;
                }
            };
            let Some(description) = description else {
                if t.description.is_none() {
                    err(
                        None,
                        format!("tool {name:?} needs a `description` (the model reads it)"),
                    );
                }
                return None;
            };
            let parameters = match &t.parameters {
                None => json!({ "type": "object", "properties": {} }),
                Some(p) => match serde_json::to_value(p.get_ref()) {
                    Ok(v) => v,
                    Err(e) => {
                        err(Some(p.span()), format!("tool {name:?}: parameters: {e}"));
                        return None;
                    }
                },
            };
            let p_span = t.parameters.as_ref().map(|p| p.span());
            if parameters.get("type").and_then(Value::as_str) != Some("object") {
                err(
                    p_span.clone(),
                    format!(
                        "tool {name:?}: parameters must be a JSON Schema with type = \"object\""
                    ),
                );
                return None;
            }
            let validator = match jsonschema::validator_for(&parameters) {
                Ok(v) => v,
                Err(e) => {
                    err(
                        p_span,
                        format!("tool {name:?}: parameters is not a valid JSON Schema: {e}"),
                    );
                    return None;
                }
            };
            let declared: Vec<String> = parameters
                .get("properties")
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            let before = problems.len();
            let http = build_http(&name, h, (base_url, allow_private), &declared, problems);
            if problems.len() != before {
                return None;
            }
            Some(ToolDef {
                name,
                description,
                parameters,
                kind: ToolKind::Http(http?),
                timeout,
                filler,
                validator,
            })
        }
    }
}

/// Header names whose value must come from a secret.
fn credential_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["authorization", "cookie"].contains(&n.as_str())
        || ["key", "token", "secret", "password", "auth", "signature"]
            .iter()
            .any(|w| n.contains(w))
}

/// A literal run that looks like a credential: 24+ characters of `A-Z a-z 0-9 _ - + / = .`
/// with at least one digit.
fn looks_like_token(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "_-+/=.".contains(c)))
        .any(|w| w.len() >= 24 && w.bytes().any(|b| b.is_ascii_digit()))
}

fn build_http(
    tool: &str,
    h: &Spanned<RawHttp>,
    (base_url, allow_private): (Option<&str>, &Allowlist),
    declared: &[String],
    problems: &mut Vec<Problem>,
) -> Option<HttpSpec> {
    let raw = h.get_ref();
    let mut err = |at: Range<usize>, m: String| problems.push((Some(at), m));
    let check_args = |t: &Template, at: Range<usize>, err: &mut dyn FnMut(Range<usize>, String)| {
        for a in t.args() {
            if !declared.iter().any(|d| d == a) {
                err(
                    at.clone(),
                    format!(
                        "tool {tool:?}: {{{{args.{a}}}}} is not a declared parameter (declared: {})",
                        if declared.is_empty() {
                            "none".to_string()
                        } else {
                            declared.join(", ")
                        }
                    ),
                );
            }
        }
    };
    let check_kinds = |t: &Template,
                       at: Range<usize>,
                       allowed: &[&str],
                       what: &str,
                       err: &mut dyn FnMut(Range<usize>, String)| {
        for s in t.segments() {
            if !matches!(s, Segment::Lit(_)) && !allowed.contains(&s.kind()) {
                let hint = if s.kind() == "secret" {
                    " (secrets go in headers only)"
                } else {
                    ""
                };
                err(
                    at.clone(),
                    format!(
                        "tool {tool:?}: {{{{{}...}}}} placeholders are not allowed in {what}{hint}",
                        s.kind()
                    ),
                );
            }
        }
    };

    let method = match &raw.method {
        None => reqwest::Method::GET,
        Some(m) => match m.get_ref().to_ascii_uppercase().as_str() {
            "GET" => reqwest::Method::GET,
            "POST" => reqwest::Method::POST,
            "PUT" => reqwest::Method::PUT,
            "PATCH" => reqwest::Method::PATCH,
            "DELETE" => reqwest::Method::DELETE,
            other => {
                err(
                    m.span(),
                    format!(
                        "tool {tool:?}: method {other:?} must be GET, POST, PUT, PATCH or DELETE"
                    ),
                );
                reqwest::Method::GET
            }
        },
    };

    // URL
    let url_span = raw.url.span();
    let url = match Template::parse(raw.url.get_ref()) {
        Ok(t) => t,
        Err(e) => {
            err(url_span, format!("tool {tool:?}: url: {e}"));
            return None;
        }
    };
    check_kinds(
        &url,
        url_span.clone(),
        &["args", "call", "base_url"],
        "the url",
        &mut err,
    );
    check_args(&url, url_span.clone(), &mut err);
    let uses_base = url.segments().contains(&Segment::BaseUrl);
    if uses_base && base_url.is_none() {
        err(
            url_span.clone(),
            format!(
                "tool {tool:?}: the url uses {{{{base_url}}}} but the profile sets no tools_base_url"
            ),
        );
    }
    if uses_base && !matches!(url.segments().first(), Some(Segment::BaseUrl)) {
        err(
            url_span.clone(),
            format!("tool {tool:?}: {{{{base_url}}}} must start the url"),
        );
    }
    if let Err(e) = url.check_url_authority(base_url) {
        err(url_span.clone(), format!("tool {tool:?}: url: {e}"));
    }
    let literal: String = url
        .segments()
        .iter()
        .filter_map(|s| match s {
            Segment::Lit(l) => Some(l.as_str()),
            _ => None,
        })
        .collect();
    if regex::Regex::new(
        r"(?i)[?&](api[_-]?key|key|token|access[_-]?token|secret|password|sig|signature)=",
    )
    .expect("static regex")
    .is_match(&literal)
    {
        err(
            url_span.clone(),
            format!(
                "tool {tool:?}: the url carries a credential parameter; send credentials in a header with {{{{secret:NAME}}}}"
            ),
        );
    }
    // A sample rendering must be an http(s) URL with a host.
    struct Sample<'a>(Option<&'a str>);
    impl super::template::Values for Sample<'_> {
        fn arg(&self, _: &str) -> Option<&Value> {
            static X: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
            Some(X.get_or_init(|| Value::String("x".into())))
        }
        fn call(&self, _: super::template::CallField) -> Option<&str> {
            Some("x")
        }
        fn base_url(&self) -> Option<&str> {
            self.0
        }
    }
    let sample = url.render_url(&Sample(base_url)).unwrap_or_default();
    match reqwest::Url::parse(&sample) {
        _ if uses_base && base_url.is_none() => {}
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            // The host is fixed text (checked above): refuse a refused IP literal now rather
            // than at the first call (names are checked when they are resolved).
            let host = egress::normalize_host(u.host_str().unwrap_or_default());
            let class = host.parse().ok().and_then(egress::refused_class);
            if let Some(class) = class.filter(|_| !allow_private.contains(&host)) {
                err(
                    url_span.clone(),
                    format!(
                        "tool {tool:?}: the url's host {host} is a {class} address, which tools may not reach; list it in the profile's tools_allow_private_hosts if that is meant"
                    ),
                );
            }
        }
        Ok(u) => err(
            url_span.clone(),
            format!(
                "tool {tool:?}: url scheme {:?} must be http or https",
                u.scheme()
            ),
        ),
        Err(e) => err(
            url_span.clone(),
            format!("tool {tool:?}: url {sample:?} does not parse: {e}"),
        ),
    }

    // Headers
    let mut headers = Vec::new();
    for (name, value) in &raw.headers {
        let at = value.span();
        let Ok(hname) = reqwest::header::HeaderName::from_bytes(name.as_bytes()) else {
            err(
                at,
                format!("tool {tool:?}: {name:?} is not a valid header name"),
            );
            continue;
        };
        if hname == reqwest::header::HOST {
            err(
                at,
                format!(
                    "tool {tool:?}: the Host header comes from the url and cannot be set (it would choose the virtual host behind the address)"
                ),
            );
            continue;
        }
        let t = match Template::parse(value.get_ref()) {
            Ok(t) => t,
            Err(e) => {
                err(at, format!("tool {tool:?}: header {name}: {e}"));
                continue;
            }
        };
        check_kinds(
            &t,
            at.clone(),
            &["args", "call", "secret"],
            "headers",
            &mut err,
        );
        check_args(&t, at.clone(), &mut err);
        let literal: String = t
            .segments()
            .iter()
            .filter_map(|s| match s {
                Segment::Lit(l) => Some(l.as_str()),
                _ => None,
            })
            .collect();
        if credential_header(name) && t.secrets().next().is_none() {
            err(
                at.clone(),
                format!(
                    "tool {tool:?}: header {name} carries a credential and must take it from a secret, e.g. \"Bearer {{{{secret:{tool}_token}}}}\" — never write tokens in the profile"
                ),
            );
        } else if looks_like_token(&literal) {
            err(
                at.clone(),
                format!(
                    "tool {tool:?}: header {name} looks like it holds a literal token; use {{{{secret:NAME}}}}"
                ),
            );
        }
        if reqwest::header::HeaderValue::from_str(&literal).is_err() {
            err(
                at,
                format!("tool {tool:?}: header {name} has characters not allowed in a header"),
            );
            continue;
        }
        headers.push((hname, t));
    }

    // Body
    let body = match &raw.body {
        None => None,
        Some(b) => {
            if method == reqwest::Method::GET {
                err(
                    b.span(),
                    format!("tool {tool:?}: a GET request has no body"),
                );
            }
            let mut problems_here = Vec::new();
            let tpl = body_template(b.get_ref(), &mut problems_here);
            for m in problems_here {
                err(b.span(), format!("tool {tool:?}: body: {m}"));
            }
            if let Some(tpl) = &tpl {
                let mut ts = Vec::new();
                collect_templates(tpl, &mut ts);
                for t in ts {
                    check_kinds(t, b.span(), &["args", "call"], "the body", &mut err);
                    check_args(t, b.span(), &mut err);
                }
            }
            tpl
        }
    };

    // Response mapping
    let mut response = ResponseMapping::default();
    if let Some(r) = &raw.response {
        let r = r.get_ref();
        if let Some(p) = &r.pointer {
            if !(p.get_ref().is_empty() || p.get_ref().starts_with('/')) {
                err(
                    p.span(),
                    format!(
                        "tool {tool:?}: response.pointer {:?} must be empty or start with '/' (RFC 6901)",
                        p.get_ref()
                    ),
                );
            }
            response.pointer = Some(p.get_ref().clone()).filter(|p| !p.is_empty());
        }
        for f in &r.fields {
            if f.get_ref().trim().is_empty() {
                err(
                    f.span(),
                    format!("tool {tool:?}: response.fields has an empty name"),
                );
            } else {
                response.fields.push(f.get_ref().clone());
            }
        }
        if let Some(m) = &r.max_bytes {
            if !(64..=65_536).contains(m.get_ref()) {
                err(
                    m.span(),
                    format!(
                        "tool {tool:?}: response.max_bytes {} must be 64..=65536",
                        m.get_ref()
                    ),
                );
            }
            response.max_bytes = Some(*m.get_ref() as usize);
        }
    }
    Some(HttpSpec {
        method,
        url,
        headers,
        body,
        response,
        allow_private_hosts: allow_private.clone(),
    })
}

fn body_template(v: &toml::Value, problems: &mut Vec<String>) -> Option<BodyTemplate> {
    Some(match v {
        toml::Value::String(s) => match Template::parse(s) {
            Ok(t) => BodyTemplate::Text(t),
            Err(e) => {
                problems.push(e.to_string());
                return None;
            }
        },
        toml::Value::Integer(i) => BodyTemplate::Const(json!(i)),
        toml::Value::Float(f) => BodyTemplate::Const(json!(f)),
        toml::Value::Boolean(b) => BodyTemplate::Const(json!(b)),
        toml::Value::Datetime(d) => BodyTemplate::Const(json!(d.to_string())),
        toml::Value::Array(a) => BodyTemplate::Array(
            a.iter()
                .map(|x| body_template(x, problems))
                .collect::<Option<Vec<_>>>()?,
        ),
        toml::Value::Table(t) => BodyTemplate::Object(
            t.iter()
                .map(|(k, x)| body_template(x, problems).map(|b| (k.clone(), b)))
                .collect::<Option<Vec<_>>>()?,
        ),
    })
}

fn collect_templates<'a>(b: &'a BodyTemplate, out: &mut Vec<&'a Template>) {
    match b {
        BodyTemplate::Const(_) => {}
        BodyTemplate::Text(t) => out.push(t),
        BodyTemplate::Array(a) => a.iter().for_each(|x| collect_templates(x, out)),
        BodyTemplate::Object(o) => o.iter().for_each(|(_, x)| collect_templates(x, out)),
    }
}

impl BodyTemplate {
    /// Renders the body with `values`; `None` only for an `{{args.NAME}}` value whose argument
    /// is missing (the caller drops the key).
    pub fn render(&self, values: &dyn super::template::Values) -> Option<Value> {
        Some(match self {
            BodyTemplate::Const(v) => v.clone(),
            BodyTemplate::Text(t) => match t.single_arg() {
                Some(name) => values.arg(name).cloned()?,
                None => Value::String(t.render(values, super::template::Encoding::Raw)),
            },
            BodyTemplate::Array(a) => Value::Array(
                a.iter()
                    .map(|x| x.render(values).unwrap_or(Value::Null))
                    .collect(),
            ),
            BodyTemplate::Object(o) => {
                let mut m = Map::new();
                for (k, x) in o {
                    if let Some(v) = x.render(values) {
                        m.insert(k.clone(), v);
                    }
                }
                Value::Object(m)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_heuristics() {
        assert!(credential_header("Authorization"));
        assert!(credential_header("X-Api-Key"));
        assert!(!credential_header("Accept"));
        assert!(looks_like_token("sk_live_4eC39HqLyjWDarjtT1zdp7dc"));
        assert!(!looks_like_token("application/json; charset=utf-8"));
        assert!(valid_tool_name("lookup_order"));
        assert!(!valid_tool_name("lookup order"));
    }
}
