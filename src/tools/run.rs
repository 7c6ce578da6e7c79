//! Running a tool: the shared [`Services`], the result types and [`execute`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use std::collections::HashMap;

use super::builtin;
use super::egress::{Allowlist, GuardedResolver};
use super::spec::{ToolDef, ToolKind};
use crate::config::{Secret, Secrets, ToolsConfig};
use crate::hubspot::HubSpot;
use crate::store::Store;

/// Looks up a named secret (`{{secret:NAME}}`); `None` when it is not set.
pub type SecretLookup = Arc<dyn Fn(&str) -> Option<Secret> + Send + Sync>;

/// The secret lookup used by the server: `<secrets_dir>/NAME` (when `secrets_dir` is not
/// empty), then [`Secrets::named`] (`$CREDENTIALS_DIRECTORY/NAME`, `VOXMACHINA_SECRET_<NAME>`),
/// through [`Secrets::named_in`]. Files are read at each call, so a rotated secret is used
/// without a restart. Unreadable files and empty or whitespace-only values count as unset (the
/// tool answers `not_configured`; the reason is logged by name, never the value): a tool never
/// sends an empty credential. Start-up refuses empty ones ([`crate::prompts::check_named_secrets`]).
pub fn secret_lookup(secrets_dir: &Path) -> SecretLookup {
    let dir: Option<PathBuf> = (!secrets_dir.as_os_str().is_empty()).then(|| secrets_dir.into());
    Arc::new(move |name: &str| {
        if !super::template::valid_name(name) {
            return None;
        }
        match Secrets::named_in(dir.as_deref(), name) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(secret = name, error = %e, "secret unusable; treated as unset");
                None
            }
        }
    })
}

/// What tools need from the controller, shared by every call.
#[derive(Clone)]
pub struct Services {
    /// HTTP client for `http` tools of profiles without `tools_allow_private_hosts`: no
    /// redirects (a 3xx is an error, so secret headers never follow a redirect to another
    /// host), no proxy, names resolved by [`super::egress::GuardedResolver`] (refused address
    /// classes fail the request), connect timeout 5 s, keep-alive pool.
    pub http: reqwest::Client,
    /// Clients with an allowlist, one per distinct `tools_allow_private_hosts`.
    allowing: Arc<std::sync::Mutex<HashMap<Allowlist, reqwest::Client>>>,
    /// `[tools]` settings.
    pub config: ToolsConfig,
    /// Named secrets for `{{secret:NAME}}`.
    pub secrets: SecretLookup,
    /// HubSpot client for `create_ticket`, when configured.
    pub hubspot: Option<HubSpot>,
    /// The store, for `lookup_call_history`.
    pub store: Option<Arc<dyn Store>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("config", &self.config)
            .field("hubspot", &self.hubspot.is_some())
            .field("store", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl Services {
    /// Services with the given settings, the server's secret lookup, no HubSpot and no store.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(config: ToolsConfig) -> Result<Services, String> {
        let http = tool_client(Allowlist::default())?;
        Ok(Services {
            http,
            allowing: Arc::default(),
            secrets: secret_lookup(&config.secrets_dir),
            config,
            hubspot: None,
            store: None,
        })
    }

    /// Adds the HubSpot client.
    pub fn with_hubspot(mut self, hubspot: Option<HubSpot>) -> Self {
        self.hubspot = hubspot;
        self
    }

    /// Adds the store.
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Replaces the secret lookup.
    pub fn with_secrets(mut self, secrets: SecretLookup) -> Self {
        self.secrets = secrets;
        self
    }

    /// The client for tools of a profile whose `tools_allow_private_hosts` is `allow`:
    /// [`Services::http`] when it is empty, else a client whose resolver lets those names
    /// resolve to refused addresses (built once per distinct list and kept; at most 64 lists).
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn client_for(&self, allow: &Allowlist) -> Result<reqwest::Client, String> {
        if allow.is_empty() {
            return Ok(self.http.clone());
        }
        let mut clients = self
            .allowing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(allow) {
            return Ok(c.clone());
        }
        if clients.len() >= 64 {
            clients.clear();
        }
        let client = tool_client(allow.clone())?;
        clients.insert(allow.clone(), client.clone());
        Ok(client)
    }

    /// The timeout of `tool`: its `timeout_ms`, else `[tools] default_timeout_ms`.
    pub fn timeout_of(&self, tool: &ToolDef) -> Duration {
        tool.timeout
            .unwrap_or(Duration::from_millis(self.config.default_timeout_ms))
    }
}

/// The tools' HTTP client (see [`Services::http`]) allowing refused addresses for `allow`.
fn tool_client(allow: Allowlist) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(GuardedResolver::new(allow))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("voxmachina/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// The call a tool runs for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallInfo {
    /// OpenAI's call id.
    pub call_id: String,
    /// Caller number, E.164.
    pub caller: Option<String>,
    /// Dialed number, E.164.
    pub dialed: Option<String>,
}

/// How a tool call went; the `outcome` label of `voxmachina_tool_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The tool answered.
    Ok,
    /// The arguments did not match the schema (or were not JSON).
    InvalidArguments,
    /// The tool did not answer within its timeout.
    Timeout,
    /// The HTTP endpoint answered a non-2xx status.
    HttpError,
    /// The answer was not JSON, too large, or lacked the mapped part.
    BadResponse,
    /// The endpoint could not be reached (DNS, connect, TLS, reset).
    Unavailable,
    /// The request was refused before it was sent: its host is (or resolves to) an address
    /// tools may not reach ([`super::egress`]).
    Blocked,
    /// A secret or integration the tool needs is not configured.
    NotConfigured,
    /// The tool cannot run on this call path (`send_dtmf` over SIP).
    Unsupported,
    /// A built-in failed (HubSpot error, store error, no caller number).
    Failed,
    /// The model called a tool the profile does not have.
    UnknownTool,
}

impl Outcome {
    /// The label: `ok`, `invalid_arguments`, `timeout`, `http_error`, `bad_response`,
    /// `unavailable`, `blocked`, `not_configured`, `unsupported`, `failed`, `unknown_tool`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::InvalidArguments => "invalid_arguments",
            Outcome::Timeout => "timeout",
            Outcome::HttpError => "http_error",
            Outcome::BadResponse => "bad_response",
            Outcome::Unavailable => "unavailable",
            Outcome::Blocked => "blocked",
            Outcome::NotConfigured => "not_configured",
            Outcome::Unsupported => "unsupported",
            Outcome::Failed => "failed",
            Outcome::UnknownTool => "unknown_tool",
        }
    }
}

/// The result of one tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// The JSON the model gets as `function_call_output` (always an object). Errors are
    /// `{"error":{"code":"...","message":"..."}}` plus optional fields (`problems`, `status`).
    pub output: Value,
    /// How it went.
    pub outcome: Outcome,
    /// The HTTP status of the endpoint, when one answered.
    pub status: Option<u16>,
    /// Operator-facing detail for the call's events and logs (never a secret value).
    pub note: Option<String>,
}

impl ToolResult {
    /// A success with `output` (wrapped as `{"result": ...}` unless it is an object).
    pub fn ok(output: Value) -> ToolResult {
        let output = match output {
            Value::Object(_) => output,
            other => json!({ "result": other }),
        };
        ToolResult {
            output,
            outcome: Outcome::Ok,
            status: None,
            note: None,
        }
    }

    /// A failure: `{"error":{"code":code,"message":message}}`.
    pub fn error(outcome: Outcome, code: &str, message: &str, note: Option<String>) -> ToolResult {
        ToolResult {
            output: json!({ "error": { "code": code, "message": message } }),
            outcome,
            status: None,
            note,
        }
    }

    /// Sets the HTTP status (also into the error object, when this is an error).
    pub fn with_status(mut self, status: Option<u16>) -> ToolResult {
        self.status = status;
        if let (Some(s), Some(e)) = (status, self.output.get_mut("error")) {
            e["status"] = json!(s);
        }
        self
    }

    /// The answer to arguments that failed validation: the problems, and what to do.
    pub fn invalid_arguments(tool: &str, problems: Vec<String>) -> ToolResult {
        let mut r = ToolResult::error(
            Outcome::InvalidArguments,
            "invalid_arguments",
            &format!(
                "The arguments do not match the parameters of {tool}. Fix them (ask the caller \
                 if a value is missing or unclear) and call {tool} again."
            ),
            Some(problems.join("; ")),
        );
        r.output["error"]["problems"] = json!(problems);
        r
    }

    /// The answer to a call of a tool the profile does not declare.
    pub fn unknown_tool(name: &str) -> ToolResult {
        ToolResult::error(
            Outcome::UnknownTool,
            "unknown_tool",
            &format!("There is no tool called {name}. Use only the tools you were given."),
            None,
        )
    }
}

/// Runs `tool` with validated `args` for `call`, bounded by its timeout
/// ([`Services::timeout_of`]). `base_url` is the profile's `tools_base_url`. Never panics on bad
/// input; every failure is a [`ToolResult`] with an error object.
pub async fn execute(
    tool: &ToolDef,
    args: &Value,
    call: &CallInfo,
    base_url: Option<&str>,
    services: &Services,
) -> ToolResult {
    let timeout = services.timeout_of(tool);
    let work = async {
        match &tool.kind {
            ToolKind::Http(spec) => super::http::run(spec, args, call, base_url, services).await,
            ToolKind::Builtin(b) => builtin::run(*b, args, call, services).await,
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => ToolResult::error(
            Outcome::Timeout,
            "timeout",
            "The tool did not answer in time. Apologise, and offer to try again later or to \
             transfer the caller.",
            Some(format!("no answer within {} ms", timeout.as_millis())),
        ),
    }
}

/// Serialises `output` within `max_bytes` of JSON: an object with an array under `result` (or
/// any array-valued key when it is the only key) loses trailing items (`"truncated": true`,
/// `"total_items"`); anything else becomes `{"truncated": true, "partial": "<prefix>"}`.
pub fn fit_output(output: Value, max_bytes: usize) -> Value {
    let size = |v: &Value| {
        serde_json::to_string(v)
            .map(|s| s.len())
            .unwrap_or(usize::MAX)
    };
    if size(&output) <= max_bytes {
        return output;
    }
    if let Value::Object(map) = &output {
        let array_key = map
            .iter()
            .find(|(_, v)| v.is_array())
            .map(|(k, _)| k.clone())
            .filter(|_| map.len() == 1 || map.contains_key("result"));
        if let Some(key) = array_key {
            let total = map[&key].as_array().map_or(0, Vec::len);
            let mut m = map.clone();
            m.insert("truncated".into(), json!(true));
            m.insert("total_items".into(), json!(total));
            let mut v = Value::Object(m);
            while size(&v) > max_bytes {
                let arr = v[&key].as_array_mut().expect("array key");
                if arr.pop().is_none() {
                    break;
                }
            }
            if size(&v) <= max_bytes {
                return v;
            }
        }
    }
    let text = output.to_string();
    let mut cut = max_bytes.saturating_sub(48).min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    json!({ "truncated": true, "partial": &text[..cut] })
}

/// Replaces every occurrence of a secret value in the strings (and object keys) of `v` with
/// `***`: an endpoint that echoes its `Authorization` header must not leak it to the model or
/// the call events. Encoded copies are caught too (`secret_forms`): base64 (standard and
/// URL-safe alphabets, with or without padding, also inside a longer encoded text such as a
/// `Basic` credential), hex (lower and upper case) and percent-encoding (RFC 3986 §2.1, upper
/// and lower case hex digits, and `application/x-www-form-urlencoded`). Secrets shorter than 4
/// bytes are not searched for.
pub fn redact(v: &mut Value, secrets: &[Secret]) {
    let mut forms: Vec<String> = secrets
        .iter()
        .map(|s| s.expose())
        .filter(|s| s.len() >= 4)
        .flat_map(secret_forms)
        .collect();
    if forms.is_empty() {
        return;
    }
    // Longest first, so a longer encoded form is replaced whole before a shorter one inside it.
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    fn clean(s: &str, forms: &[String]) -> Option<String> {
        let mut out: Option<String> = None;
        for x in forms {
            let cur = out.as_deref().unwrap_or(s);
            if cur.contains(x.as_str()) {
                out = Some(cur.replace(x.as_str(), "***"));
            }
        }
        out
    }
    fn walk(v: &mut Value, forms: &[String]) {
        match v {
            Value::String(s) => {
                if let Some(c) = clean(s, forms) {
                    *s = c;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, forms)),
            Value::Object(o) => {
                let keys: Vec<String> = o.keys().cloned().collect();
                for k in keys {
                    if let Some(c) = clean(&k, forms) {
                        let val = o.remove(&k).unwrap_or(Value::Null);
                        o.insert(c, val);
                    }
                }
                o.values_mut().for_each(|x| walk(x, forms));
            }
            _ => {}
        }
    }
    walk(v, &forms);
}

/// The forms of `secret` that [`redact`] looks for: the value itself; its hex (lower and upper
/// case); its percent-encodings; its base64 in the four alphabets/padding variants of RFC 4648
/// §4–5; and the base64 text that the secret produces wherever it sits inside a longer encoded
/// byte string (at each of the three byte offsets modulo 3, the characters that depend on the
/// secret alone), when that core is at least 8 characters long.
pub fn secret_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let bytes = secret.as_bytes();
    let mut forms = vec![secret.to_string()];
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    forms.push(hex.to_ascii_uppercase());
    forms.push(hex);
    let pct = percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    forms.push(lower_percent_hex(&pct));
    forms.push(pct);
    forms.push(form_urlencoded::byte_serialize(bytes).collect());
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(engine.encode(bytes));
    }
    for offset in 0..3usize {
        let mut shifted = vec![0u8; offset];
        shifted.extend_from_slice(bytes);
        let text = STANDARD_NO_PAD.encode(&shifted);
        // Characters of whole 3-byte groups only; the first group mixes in the preceding bytes
        // when offset > 0, the last partial group the following ones.
        let start = if offset == 0 { 0 } else { 4 };
        let end = 4 * (shifted.len() / 3);
        if end >= start + 8 {
            let core = &text[start..end];
            forms.push(core.replace('+', "-").replace('/', "_"));
            forms.push(core.to_string());
        }
    }
    forms.retain(|f| f.len() >= 4);
    forms.sort();
    forms.dedup();
    forms
}

/// `%2f` for `%2F`: percent-encoding with lower-case hex digits (RFC 3986 §2.1 allows both).
fn lower_percent_hex(pct: &str) -> String {
    let mut out = String::with_capacity(pct.len());
    let mut rest = pct;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let hex_end = (i + 3).min(rest.len());
        out.push_str(&rest[i..hex_end].to_ascii_lowercase());
        rest = &rest[hex_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_output_truncates_arrays_then_text() {
        let items: Vec<Value> = (0..100)
            .map(|i| json!({"sku": format!("SKU-{i}")}))
            .collect();
        let v = fit_output(json!({ "result": items }), 300);
        assert!(v.to_string().len() <= 300, "{v}");
        assert_eq!(v["truncated"], true);
        assert_eq!(v["total_items"], 100);
        assert!(!v["result"].as_array().unwrap().is_empty());
        let big = json!({ "text": "é".repeat(500) });
        let v = fit_output(big, 100);
        assert_eq!(v["truncated"], true);
        assert!(v.to_string().len() <= 130, "{v}");
        let small = json!({"a": 1});
        assert_eq!(fit_output(small.clone(), 100), small);
    }

    #[test]
    fn redacts_secret_values() {
        let mut v = json!({"echo": {"authorization": "Bearer tok-123456"}, "list": ["tok-123456"]});
        redact(&mut v, &[Secret::new("tok-123456")]);
        assert!(!v.to_string().contains("tok-123456"), "{v}");
        assert_eq!(v["echo"]["authorization"], "Bearer ***");
    }

    #[test]
    fn redacts_encoded_copies() {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let secret = "tok/+?~ 9f8e7d6c5b4a";
        let basic = STANDARD.encode(format!("user:{secret}"));
        let copies = [
            STANDARD.encode(secret),
            URL_SAFE_NO_PAD.encode(secret),
            secret
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            secret
                .bytes()
                .map(|b| format!("{b:02X}"))
                .collect::<String>(),
            percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
            form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>(),
            basic.clone(),
        ];
        for copy in copies {
            let mut v = json!({ "echo": format!("header was {copy}."), copy.clone(): 1 });
            redact(&mut v, &[Secret::new(secret)]);
            let text = v.to_string();
            assert!(!text.contains(&copy), "{copy} survived: {text}");
            assert!(text.contains("header was "), "{text}");
        }
        // The Basic credential keeps at most a few characters next to the user name.
        let mut v = json!(format!("Basic {basic}"));
        redact(&mut v, &[Secret::new(secret)]);
        let left = v.as_str().unwrap().replace("Basic ", "").replace("***", "");
        assert!(left.len() <= 12, "{v}");
        // Unrelated text is untouched.
        let mut v = json!({"status": "shipped", "eta_days": 3});
        let before = v.clone();
        redact(&mut v, &[Secret::new(secret)]);
        assert_eq!(v, before);
    }
}
