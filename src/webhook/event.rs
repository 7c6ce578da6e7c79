//! OpenAI webhook event payloads (<https://developers.openai.com/api/docs/guides/webhooks>; OpenAPI
//! schemas `WebhookRealtimeCallIncoming`, `WebhookLiveCallIncoming`; openai-python
//! `types/webhooks/live_transport_incoming_webhook_event.py`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::sip::SipHeader;

/// The event type of an incoming Realtime SIP call.
pub const REALTIME_CALL_INCOMING: &str = "realtime.call.incoming";

/// The event type of an incoming GPT-Live SIP call (openai-python
/// `LiveTransportIncomingWebhookEvent`).
pub const LIVE_TRANSPORT_INCOMING: &str = "live.transport.incoming";

/// The deprecated GPT-Live incoming-call event (OpenAPI `WebhookLiveCallIncoming`): same shape
/// without `data.type`, still delivered to subscriptions made before the rename, handled like
/// [`LIVE_TRANSPORT_INCOMING`].
pub const LIVE_CALL_INCOMING: &str = "live.call.incoming";

/// The envelope every OpenAI webhook event shares: `{object, id, type, created_at, data}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    /// `evt_...` (the event id; the idempotency key is the `webhook-id` header, not this).
    #[serde(default)]
    pub id: String,
    /// Event type, e.g. `realtime.call.incoming`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds when the event happened.
    #[serde(default)]
    pub created_at: i64,
    /// Event-specific data.
    #[serde(default)]
    pub data: Value,
}

/// `data` of `realtime.call.incoming` (OpenAPI `WebhookRealtimeCallIncoming`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RealtimeCallIncoming {
    /// `rtc_...`, opaque.
    pub call_id: String,
    /// INVITE headers without authorization headers, order and repeats preserved. Untrusted.
    pub sip_headers: Vec<SipHeader>,
    /// `rtp` or `srtp` when known (optional, newer field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip_media_security: Option<String>,
}

/// `data` of `live.transport.incoming` and the deprecated `live.call.incoming`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LiveTransportIncoming {
    /// `live_...`, opaque; not the Realtime `rtc_...` id of the same SIP call.
    pub session_id: String,
    /// `"sip"` on `live.transport.incoming`; absent on `live.call.incoming`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// INVITE headers without authorization headers. Untrusted.
    #[serde(default)]
    pub sip_headers: Vec<SipHeader>,
    /// `rtp` or `srtp` when known (Live requires SRTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip_media_security: Option<String>,
}

/// Builds a `live.transport.incoming` (or, with `kind` [`LIVE_CALL_INCOMING`], the deprecated)
/// event body in the documented shape.
pub fn live_incoming(
    kind: &str,
    event_id: &str,
    created_at: i64,
    data: &LiveTransportIncoming,
) -> Value {
    json!({
        "object": "event",
        "id": event_id,
        "type": kind,
        "created_at": created_at,
        "data": data,
    })
}

/// Builds a `realtime.call.incoming` event body in the documented shape, used by
/// `voxmachina trigger`.
pub fn realtime_call_incoming(
    event_id: &str,
    created_at: i64,
    data: &RealtimeCallIncoming,
) -> Value {
    json!({
        "object": "event",
        "id": event_id,
        "type": REALTIME_CALL_INCOMING,
        "created_at": created_at,
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_live_shapes() {
        let body = r#"{"object":"event","id":"evt_1","type":"live.transport.incoming","created_at":1719168000,
            "data":{"type":"sip","session_id":"live_1","sip_media_security":"srtp","sip_headers":[{"name":"From","value":"x"}]}}"#;
        let env: Envelope = serde_json::from_str(body).unwrap();
        assert_eq!(env.kind, LIVE_TRANSPORT_INCOMING);
        let data: LiveTransportIncoming = serde_json::from_value(env.data).unwrap();
        assert_eq!(data.session_id, "live_1");
        assert_eq!(data.transport.as_deref(), Some("sip"));
        let old = r#"{"object":"event","id":"evt_2","type":"live.call.incoming","created_at":1,
            "data":{"session_id":"live_2","sip_headers":[]}}"#;
        let env: Envelope = serde_json::from_str(old).unwrap();
        let data: LiveTransportIncoming = serde_json::from_value(env.data).unwrap();
        assert_eq!(
            (data.session_id.as_str(), data.transport.as_deref()),
            ("live_2", None)
        );
        let rebuilt = live_incoming(LIVE_CALL_INCOMING, "evt_2", 1, &data);
        assert!(rebuilt["data"].get("type").is_none());
    }

    #[test]
    fn parses_reference_example() {
        let body = r#"{
  "object": "event",
  "id": "evt_685343a1381c819085d44c354e1b330e",
  "type": "realtime.call.incoming",
  "created_at": 1750287018,
  "data": {
    "call_id": "rtc_479a275623b54bdb9b6fbae2f7cbd408",
    "sip_media_security": "srtp",
    "sip_headers": [
      { "name": "From", "value": "sip:+142555512112@sip.example.com" },
      { "name": "To", "value": "sip:+18005551212@sip.example.com" },
      { "name": "Call-ID", "value": "03782086-4ce9-44bf-8b0d-4e303d2cc590" }
    ]
  }
}"#;
        let env: Envelope = serde_json::from_str(body).unwrap();
        assert_eq!(env.kind, REALTIME_CALL_INCOMING);
        let data: RealtimeCallIncoming = serde_json::from_value(env.data).unwrap();
        assert_eq!(data.call_id, "rtc_479a275623b54bdb9b6fbae2f7cbd408");
        assert_eq!(data.sip_headers.len(), 3);
        assert_eq!(data.sip_media_security.as_deref(), Some("srtp"));
        let rebuilt = realtime_call_incoming("evt_1", 1, &data);
        assert_eq!(rebuilt["data"]["sip_headers"][2]["name"], "Call-ID");
    }
}
