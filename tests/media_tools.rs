//! Tools on the Twilio Media Streams path: the same monitor and tool layer as on the SIP path,
//! driven by a Realtime model session behind the bridge. The controller runs on 127.0.0.1:0
//! with the OpenAI emulator (model sessions), the fake Twilio REST API and a local HTTP tool
//! server (`support::tool_server`).

mod media_bridge_common;
mod support;

use std::time::Duration;

use media_bridge_common::*;
use serde_json::{Value, json};
use support::tool_server::ToolServer;
use voxmachina::calls::record::CallState;
use voxmachina_emulator::Script;

/// The line our media tool profile answers.
const TOOLS_LINE: &str = "+18005550203";
const SECRET: &str = "tok-media-9c8b7a6f5e4d3c2b1a";

/// A media profile with one HTTP tool and the `send_dtmf` built-in.
fn tools_profile(base: &str) -> String {
    format!(
        r#"
tools_base_url = "{base}"
# The tool server runs on loopback: allowed explicitly (tools may not reach loopback by default).
tools_allow_private_hosts = ["127.0.0.1"]
[match]
dialed = ["{TOOLS_LINE}"]
[session]
audio = "pcmu"

[[tools]]
name = "lookup_order"
description = "Look up an order."
[tools.parameters]
type = "object"
required = ["order_id"]
[tools.parameters.properties.order_id]
type = "string"
[tools.http]
url = "{{{{base_url}}}}/orders/{{{{args.order_id}}}}"
headers = {{ Authorization = "Bearer {{{{secret:orders_token}}}}" }}
[tools.http.response]
pointer = "/order"
fields = ["order_id", "status"]

[[tools]]
builtin = "send_dtmf"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_run_on_the_media_path_through_the_shared_monitor() {
    let tools = ToolServer::start().await;
    let base = tools.base_url();
    let m = start(|config| {
        let prompts = config.prompts.dir.clone();
        std::fs::write(prompts.join("media_tools.toml"), tools_profile(&base)).unwrap();
        std::fs::write(prompts.join("media_tools.md"), "You look up orders.\n").unwrap();
        let secrets = prompts.parent().unwrap().join("tool-secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(secrets.join("orders_token"), format!("{SECRET}\n")).unwrap();
        config.tools.secrets_dir = secrets;
    })
    .await;
    m.h.emulator.push_model_script(
        Script::new()
            .greeting("Hello, order desk.")
            .tool("lookup_order", json!({"order_id": "SK-10423"}))
            .tool("send_dtmf", json!({"digits": "1234#"}))
            .reply("Your order has shipped."),
    );
    let sid = call_sid(31);
    let (status, twiml) = m.voice_webhook(&sid, CALLER, TOOLS_LINE).await;
    assert_eq!(status, 200, "{twiml}");
    assert!(
        twiml.contains(r#"<Parameter name="profile" value="media_tools"/>"#),
        "{twiml}"
    );
    let phone = m.phone(&sid, &twiml).await;
    let session = m.session(1).await;

    // Each output is followed by a response.create on the model session.
    let creates_after_outputs = |events: &[Value]| {
        events
            .windows(2)
            .filter(|w| {
                w[0]["item"]["type"] == "function_call_output" && w[1]["type"] == "response.create"
            })
            .count()
    };
    let view =
        m.h.emulator
            .wait_for(&session, Duration::from_secs(15), |v| {
                v.function_outputs.len() == 2 && creates_after_outputs(&v.client_events) == 2
            })
            .await
            .expect("both tool outputs reached the model session, each followed by a response");
    let outputs: Vec<Value> = view
        .function_outputs
        .iter()
        .map(|(_, o)| serde_json::from_str(o).expect("output is JSON"))
        .collect();
    // The HTTP tool ran against the tool server with the secret header, mapped as on SIP.
    assert_eq!(
        outputs[0],
        json!({"order_id": "SK-10423", "status": "shipped"})
    );
    let seen = tools.seen_at("/v1/orders/SK-10423");
    assert_eq!(seen.len(), 1, "{:#?}", tools.seen());
    assert_eq!(
        seen[0].headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {SECRET}").as_str())
    );
    // send_dtmf: Twilio can only send DTMF by replacing the call's TwiML (`<Play digits>`),
    // which would end the media stream, so the model gets the unsupported error here too.
    assert_eq!(outputs[1]["error"]["code"], "unsupported", "{}", outputs[1]);

    phone.stop();
    let record = m.h.wait_final(&sid).await;
    assert_eq!(record.state, CallState::Ended, "{record:#?}");
    assert_eq!(record.after_call.tools["lookup_order"]["ok"], 1);
    assert_eq!(record.after_call.tools["send_dtmf"]["unsupported"], 1);
    let events = m.h.events(&sid).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == "tool_result" && e.detail["outcome"] == "ok"),
        "{events:#?}"
    );
    let api = serde_json::to_string(&events).unwrap();
    assert!(!api.contains(SECRET), "secret in the call events");
}
