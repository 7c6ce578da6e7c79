//! Tool templates (`{{args.NAME}}`, `{{call.*}}`, `{{base_url}}`, `{{secret:NAME}}`,
//! `{{summary.*}}`, `{{extract.NAME}}`) and the model's tool-call arguments, as the `http` tool
//! executor uses them: the arguments checked against the tool's JSON Schema, then the URL
//! (percent-encoded), the headers and the JSON body rendered.
//!
//! Input: `template \0 arguments JSON \0 text`. The template is parsed and rendered on its own;
//! the arguments (and, as string arguments, the text) go to a fixed tool whose URL is
//! `{{base_url}}/orders/{{args.id}}/items?q={{args.q}}&c={{call.caller}}`.
//!
//! Properties:
//! - nothing panics;
//! - a parsed template prints back (placeholders in canonical form) to the same segments;
//! - raw rendering is the literal text with each value inserted as is; URL rendering
//!   percent-encodes each substituted value to RFC 3986 unreserved characters and `%XX` only,
//!   and decodes back to the value;
//! - an argument cannot change the request's target: `render_url` refuses exactly the ids `.`
//!   and `..` (which a URL parser would remove as dot-segments); otherwise the rendered URL
//!   parses, keeps its scheme, host and path segments (`v1`, `orders`, the id, `items`) and its
//!   query keys (`q`, `c`), and each argument decodes back unchanged from its place;
//! - a header value built from arguments is either refused or free of CR, LF and NUL;
//! - the JSON body keeps the template's keys, and a whole-string `{{args.NAME}}` takes the
//!   argument's JSON value.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use voxmachina::prompts::ProfileSet;
use voxmachina::tools::template::{
    CallField, Encoding, Segment, SummaryField, Template, Values, arg_text,
};
use voxmachina::tools::{ToolDef, ToolKind};
use voxmachina_fuzz::{fields, text_fields};

const BASE_URL: &str = "https://api.example.com/v1";

const PROFILE: &str = r#"
name = "tools"
default = true
tools_base_url = "https://api.example.com/v1"

[[tools]]
name = "lookup_order"
description = "Looks up an order."
parameters = { type = "object", properties = { id = { type = "string", maxLength = 300 }, q = {} }, required = ["id"] }
[tools.http]
method = "POST"
url = "{{base_url}}/orders/{{args.id}}/items?q={{args.q}}&c={{call.caller}}"
headers = { X-Order = "{{args.id}}", Authorization = "Bearer {{secret:orders_token}}" }
body = { id = "{{args.id}}", note = "note: {{args.q}}", list = ["{{args.q}}", 1] }
"#;

fn tool() -> &'static Arc<ToolDef> {
    static TOOL: OnceLock<Arc<ToolDef>> = OnceLock::new();
    TOOL.get_or_init(|| {
        let set = ProfileSet::from_texts(
            Path::new("/fuzz"),
            vec![(PathBuf::from("/fuzz/tools.toml"), PROFILE.to_string())],
            &|_| Ok("Help the caller.".to_string()),
        )
        .unwrap_or_else(|e| panic!("the fuzz profile loads: {e}"));
        set.default_profile()
            .tools
            .get("lookup_order")
            .expect("the tool")
            .clone()
    })
}

/// The values the `http` executor renders with (`src/tools/http.rs`).
struct Vals<'a> {
    args: &'a Value,
    text: &'a str,
}

impl Values for Vals<'_> {
    fn arg(&self, name: &str) -> Option<&Value> {
        self.args.get(name).filter(|v| !v.is_null())
    }
    fn call(&self, _field: CallField) -> Option<&str> {
        Some(self.text)
    }
    fn base_url(&self) -> Option<&str> {
        Some(BASE_URL)
    }
    fn secret(&self, _name: &str) -> Option<&str> {
        Some(self.text)
    }
    fn summary(&self, _field: SummaryField) -> Option<&str> {
        Some(self.text)
    }
    fn extract(&self, _name: &str) -> Option<&str> {
        Some(self.text)
    }
}

fuzz_target!(|data: &[u8]| {
    let [template, _, _] = fields::<3>(data);
    let [_, args_json, text] = text_fields::<3>(data);
    let args = match serde_json::from_str::<Value>(&args_json) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({ "x": text, "id": text, "q": text }),
    };
    let values = Vals {
        args: &args,
        text: &text,
    };
    if let Ok(template) = std::str::from_utf8(template) {
        if let Ok(t) = Template::parse(template) {
            template_properties(&t, &values);
        }
    }

    let tool = tool();
    let ToolKind::Http(spec) = &tool.kind else {
        unreachable!("an http tool")
    };
    let string_args = json!({ "id": text, "q": text });
    let checked = tool.check_arguments(&args_json).ok();
    for args in checked.iter().chain([&string_args]) {
        let values = Vals { args, text: &text };
        let rendered = match spec.url.render_url(&values) {
            Ok(u) => u,
            Err(_) => {
                // Refused only for a `.` or `..` path segment (a parser would remove it).
                let id = arg_text(values.arg("id"));
                assert!(id == "." || id == "..", "refused id {id:?}");
                continue;
            }
        };
        assert_eq!(rendered, spec.url.render(&values, Encoding::Url));
        let url = url::Url::parse(&rendered)
            .unwrap_or_else(|e| panic!("{rendered:?} does not parse: {e}"));
        assert_eq!(
            (url.scheme(), url.host_str()),
            ("https", Some("api.example.com"))
        );
        let segments: Vec<&str> = url.path_segments().expect("a path").collect();
        assert_eq!(segments.len(), 4, "the path changed: {rendered:?} -> {url}");
        assert_eq!(
            [segments[0], segments[1], segments[3]],
            ["v1", "orders", "items"]
        );
        let id = arg_text(values.arg("id"));
        assert_eq!(
            percent_decode_str(segments[2])
                .decode_utf8()
                .expect("UTF-8"),
            id
        );
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let q = arg_text(values.arg("q"));
        assert_eq!(
            query,
            [("q".to_string(), q), ("c".to_string(), text.clone())]
        );

        for (_, t) in &spec.headers {
            let value = t.render(&values, Encoding::Raw);
            if http::HeaderValue::from_str(&value).is_ok() {
                assert!(!value.contains(['\r', '\n', '\0']), "{value:?}");
            }
        }
        let body = spec
            .body
            .as_ref()
            .expect("a body")
            .render(&values)
            .expect("an object");
        let back: Value = serde_json::from_str(&serde_json::to_string(&body).expect("serializes"))
            .expect("parses");
        assert_eq!(back, body);
        let obj = back.as_object().expect("an object");
        assert!(
            obj.keys()
                .all(|k| ["id", "note", "list"].contains(&k.as_str()))
        );
        assert_eq!(obj.get("id"), values.arg("id"));
        assert_eq!(
            obj["note"],
            Value::String(format!("note: {}", arg_text(values.arg("q"))))
        );
    }
});

/// The placeholder text of one segment, as a template writes it.
fn canonical(seg: &Segment) -> String {
    match seg {
        Segment::Lit(s) => s.clone(),
        Segment::Arg(n) => format!("{{{{args.{n}}}}}"),
        Segment::Call(CallField::Id) => "{{call.id}}".into(),
        Segment::Call(CallField::Caller) => "{{call.caller}}".into(),
        Segment::Call(CallField::Dialed) => "{{call.dialed}}".into(),
        Segment::BaseUrl => "{{base_url}}".into(),
        Segment::Secret(n) => format!("{{{{secret:{n}}}}}"),
        Segment::Summary(SummaryField::Intent) => "{{summary.intent}}".into(),
        Segment::Summary(SummaryField::Outcome) => "{{summary.outcome}}".into(),
        Segment::Extract(n) => format!("{{{{extract.{n}}}}}"),
    }
}

fn template_properties(t: &Template, values: &Vals<'_>) {
    let segs = t.segments();
    // There is no escape for a literal `{{`, so text ending in `{` right before a placeholder
    // cannot be written back unambiguously.
    let ambiguous = segs
        .windows(2)
        .any(|w| matches!(&w[0], Segment::Lit(s) if s.ends_with('{')));
    if !ambiguous {
        let printed: String = segs.iter().map(canonical).collect();
        let again = Template::parse(&printed).expect("printed template parses");
        assert_eq!(again.segments(), segs, "{printed:?}");
    }
    let mut raw = String::new();
    let mut url = String::new();
    for seg in segs {
        let value = match seg {
            Segment::Lit(s) => {
                raw.push_str(s);
                url.push_str(s);
                continue;
            }
            Segment::BaseUrl => {
                raw.push_str(BASE_URL);
                url.push_str(BASE_URL);
                continue;
            }
            Segment::Arg(n) => arg_text(values.arg(n)),
            _ => values.text.to_string(),
        };
        raw.push_str(&value);
        let alone = Template::parse(&canonical(seg)).expect("one placeholder parses");
        let encoded = alone.render(values, Encoding::Url);
        assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
            "{encoded:?}"
        );
        assert_eq!(
            percent_decode_str(&encoded).decode_utf8().expect("UTF-8"),
            value
        );
        url.push_str(&encoded);
    }
    assert_eq!(t.render(values, Encoding::Raw), raw);
    assert_eq!(t.render(values, Encoding::Url), url);
}
