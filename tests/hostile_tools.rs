//! Tools turned into SSRF, tried as an attacker (a hostile profile author's mistake, or a model
//! steered by the caller) would: `voxmachina check` refuses every url template where a value
//! could choose the scheme, user, host or port; hostile arguments stay one path segment or one
//! query value on the wire; a name resolving to loopback is refused after DNS resolution unless
//! the profile allows it by name, and the model gets an error object while the call records a
//! `tool_result` event with the reason. Real controller on 127.0.0.1:0, the OpenAI emulator as the
//! model, a local HTTP tool server as the business API.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::harness::{API_KEY, Harness, test_config, test_secrets};
use support::tool_server::ToolServer;
use voxmachina::app;
use voxmachina_emulator::{CallView, Emulator, EmulatorConfig, Script};

fn voxmachina_check(prompts: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxmachina"))
        .arg("check")
        .env("VOXMACHINA_PROMPTS__DIR", prompts)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn write_profile(dir: &Path, name: &str, toml: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{name}.toml")), toml).unwrap();
    std::fs::write(dir.join(format!("{name}.md")), "Agent.\n").unwrap();
}

/// One http tool `name` with one string parameter `x` and the given url (TOML-escaped).
fn tool(name: &str, url: &str) -> String {
    format!(
        "[[tools]]\nname = \"{name}\"\ndescription = \"d\"\nparameters = {{ type = \"object\", properties = {{ x = {{ type = \"string\" }} }} }}\nhttp = {{ url = \"{url}\" }}\n"
    )
}

#[test]
fn check_refuses_every_template_where_a_value_can_choose_where_the_request_goes() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "arg_host",
            "http://{{args.x}}/x",
            "scheme, user, host or port",
        ),
        ("arg_is_url", "{{args.x}}", "scheme, user, host or port"),
        (
            "arg_extends_host",
            "https://api.example.com{{args.x}}",
            "scheme, user, host or port",
        ),
        (
            "arg_port",
            "https://api.example.com:{{args.x}}/x",
            "scheme, user, host or port",
        ),
        (
            "arg_userinfo",
            "https://{{args.x}}@api.example.com/x",
            "scheme, user, host or port",
        ),
        (
            "caller_in_host",
            "https://api.example.com.{{call.caller}}/x",
            "{{call.caller}} could choose",
        ),
        (
            "base_then_arg",
            "{{base_url}}{{args.x}}",
            "{{base_url}} must be followed by",
        ),
        (
            "base_then_text",
            "{{base_url}}.evil.example/x",
            "{{base_url}} must be followed by",
        ),
        (
            "loopback_literal",
            "http://127.0.0.1:8080/admin",
            "127.0.0.1 is a loopback address",
        ),
        (
            "metadata_literal",
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254 is a link-local address",
        ),
        (
            "mapped_literal",
            "http://[::ffff:10.0.0.1]/x",
            "is a private address",
        ),
    ];
    let mut text = String::from(
        "default = true\ntools_base_url = \"https://api.example.com\"\ntools_allow_private_hosts = [\"*.internal\"]\n",
    );
    for (name, url, _) in cases {
        text.push_str(&tool(name, url));
    }
    text.push_str(
        "[[tools]]\nname = \"host_header\"\ndescription = \"d\"\nparameters = { type = \"object\", properties = { x = { type = \"string\" } } }\nhttp = { url = \"https://api.example.com/x\", headers = { Host = \"{{args.x}}\" } }\n",
    );
    write_profile(dir.path(), "default", &text);
    let (ok, out) = voxmachina_check(dir.path());
    assert!(!ok, "{out}");
    for (name, _, message) in cases {
        assert!(
            out.lines()
                .any(|l| l.contains(&format!("tool \"{name}\"")) && l.contains(message)),
            "{name}: no error containing {message:?} in\n{out}"
        );
    }
    assert!(
        out.lines()
            .any(|l| l.contains("host_header") && l.contains("Host header")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("tools_allow_private_hosts") && l.contains("*.internal")),
        "{out}"
    );

    // The same shapes written safely pass, and a private host passes when listed by name.
    let good = tempfile::tempdir().unwrap();
    let mut text = String::from(
        "default = true\ntools_base_url = \"https://api.example.com/v1\"\ntools_allow_private_hosts = [\"127.0.0.1\", \"tools.internal\"]\n",
    );
    for (name, url) in [
        ("path", "{{base_url}}/orders/{{args.x}}"),
        ("query", "{{base_url}}?q={{args.x}}&c={{call.caller}}"),
        ("literal", "https://api.example.com/x/{{args.x}}"),
        ("loopback_allowed", "http://127.0.0.1:8080/x/{{args.x}}"),
        ("internal", "http://tools.internal/x/{{args.x}}"),
    ] {
        text.push_str(&tool(name, url));
    }
    write_profile(good.path(), "default", &text);
    let (ok, out) = voxmachina_check(good.path());
    assert!(ok, "{out}");
    assert!(out.contains("loopback_allowed"), "{out}");
}

/// A controller whose default profile has `extra` (top-level keys) and one tool `probe`
/// (`{{base_url}}/orders/{{args.id}}/detail?q={{args.q}}`), with tools_base_url = `base`.
async fn serve(base: &str, extra: &str) -> Harness {
    let emulator = Emulator::start(EmulatorConfig {
        api_key: API_KEY.to_string(),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    write_profile(
        &prompts,
        "default",
        &format!(
            r#"default = true
greeting = "Greet the caller."
tools_base_url = "{base}"
{extra}
[[tools]]
name = "probe"
description = "Look up an order."
parameters = {{ type = "object", properties = {{ id = {{ type = "string" }}, q = {{ type = "string" }} }}, required = ["id"] }}
http = {{ url = "{{{{base_url}}}}/orders/{{{{args.id}}}}/detail?q={{{{args.q}}}}" }}
"#
        ),
    );
    let config = test_config(&emulator, dir.path(), &prompts);
    let server = app::start(config, test_secrets())
        .await
        .expect("controller starts");
    Harness {
        emulator,
        server,
        dir,
        http: reqwest::Client::new(),
    }
}

fn script(calls: &[Value]) -> Script {
    let mut s = Script::new()
        .auto_reply(false)
        .greeting_wait_ms(200)
        .turn_gap_ms(20)
        .tool_timeout_ms(3_000);
    for args in calls {
        s = s.tool("probe", args.clone());
    }
    s.wait_ms(100).hangup()
}

fn outputs(view: &CallView) -> Vec<Value> {
    view.function_outputs
        .iter()
        .map(|(_, o)| serde_json::from_str(o).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_arguments_stay_one_path_segment_or_one_query_value() {
    let tools = ToolServer::start().await;
    let h = serve(
        &tools.base_url(),
        "# The tool server runs on loopback: allowed by name.\ntools_allow_private_hosts = [\"127.0.0.1\"]",
    )
    .await;
    let hostile = [
        ("/", "/v1/orders/%2F/detail"),
        ("@", "/v1/orders/%40/detail"),
        ("#", "/v1/orders/%23/detail"),
        ("?", "/v1/orders/%3F/detail"),
        ("%2e%2e", "/v1/orders/%252e%252e/detail"),
        ("../../admin", "/v1/orders/..%2F..%2Fadmin/detail"),
        ("...", "/v1/orders/.../detail"),
        (
            "evil.example:80@x",
            "/v1/orders/evil.example%3A80%40x/detail",
        ),
    ];
    let mut calls: Vec<Value> = hostile
        .iter()
        .map(|(id, _)| json!({"id": id, "q": "x&admin=1#frag"}))
        .collect();
    calls.push(json!({"id": ".."}));
    calls.push(json!({"id": "."}));
    let (call_id, view, _) = h.call_to_end(script(&calls)).await;

    let seen = tools.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    let want: Vec<&str> = hostile.iter().map(|(_, p)| *p).collect();
    assert_eq!(paths, want, "each argument is exactly one path segment");
    for s in &seen {
        assert_eq!(s.param("q").as_deref(), Some("x&admin=1#frag"), "{s:?}");
        assert_eq!(s.param("admin"), None, "{s:?}");
    }
    // `..` and `.` never reach the server: the model is told to fix the argument.
    let out = outputs(&view);
    assert_eq!(out.len(), calls.len(), "{out:#?}");
    for o in &out[hostile.len()..] {
        assert_eq!(o["error"]["code"], "invalid_arguments", "{o}");
        assert!(
            o["error"]["problems"][0]
                .as_str()
                .unwrap()
                .contains("{{args.id}} makes the path segment")
        );
    }
    let events = h.events(&call_id).await;
    let results: Vec<&Value> = events
        .iter()
        .filter(|e| e.kind == "tool_result")
        .map(|e| &e.detail)
        .collect();
    assert_eq!(results.len(), calls.len());
    assert_eq!(results.last().unwrap()["outcome"], "invalid_arguments");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_loopback_is_refused_unless_the_profile_allows_it() {
    let tools = ToolServer::start().await;
    // `localhost` resolves to 127.0.0.1 (and ::1) through the system resolver: a DNS answer the
    // url's text does not show, checked when the connection is made.
    let base = format!("http://localhost:{}/v1", tools.addr.port());

    let h = serve(&base, "").await;
    let (call_id, view, record) = h.call_to_end(script(&[json!({"id": "SK-1"})])).await;
    assert!(
        tools.seen().is_empty(),
        "nothing was sent: {:?}",
        tools.seen()
    );
    let out = outputs(&view);
    assert_eq!(out[0]["error"]["code"], "blocked", "{out:?}");
    assert!(
        !out[0].to_string().contains("127.0.0.1"),
        "the model is not told the address: {out:?}"
    );
    let events = h.events(&call_id).await;
    let result = events
        .iter()
        .find(|e| e.kind == "tool_result")
        .expect("tool_result event");
    assert_eq!(result.detail["outcome"], "blocked");
    let note = result.detail["note"].as_str().unwrap();
    assert!(
        note.contains("host localhost") && note.contains("loopback"),
        "{note}"
    );
    assert!(note.contains("tools_allow_private_hosts"), "{note}");
    assert_eq!(record.after_call.tools["probe"]["blocked"], 1);
    drop(h);

    // Allowed by name: the same tool reaches the server.
    let h = serve(
        &base,
        "# The tool server runs on loopback: allowed by name.\ntools_allow_private_hosts = [\"localhost\"]",
    )
    .await;
    let (_, view, _) = h.call_to_end(script(&[json!({"id": "SK-1"})])).await;
    assert_eq!(tools.seen_at("/v1/orders/SK-1/detail").len(), 1);
    let out = outputs(&view);
    assert_eq!(
        out[0]["error"]["code"], "not_found",
        "the server answered: {out:?}"
    );
}
