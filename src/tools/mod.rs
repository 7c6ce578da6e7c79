//! Declarative agent tools: the `[[tools]]` of a prompt profile, validated at load time and run
//! by the call monitor when the model calls them.
//!
//! A tool is either an **HTTP request** built from templates or a **built-in** of the controller
//! ([`Builtin`]: `transfer_to_human`, `end_call`, `send_dtmf`, `create_ticket`,
//! `lookup_call_history`). The model sees each as a function tool (`{type:"function", name,
//! description, parameters}`, OpenAPI `RealtimeSessionCreateRequestGA`) in the `/accept` body.
//!
//! # Profile format
//!
//! ```toml
//! tools_base_url = "https://api.shop.example/v1"  # optional; {{base_url}} in tool urls
//! tools_allow_private_hosts = ["tools.internal"]  # optional; hosts that may be private/loopback
//! filler_line = "One moment while I check."       # optional; overrides [tools] filler_line
//!
//! [[tools]]
//! name = "lookup_order"                 # ^[A-Za-z0-9_-]{1,64}$, unique in the profile
//! description = "Look up an order by its number: status and delivery date."
//! timeout_ms = 4000                     # optional, 1..=60000; default [tools] default_timeout_ms
//! filler = "Let me pull up that order." # optional; the line said when the tool runs long
//! [tools.parameters]                    # JSON Schema of the arguments, type = "object"
//! type = "object"
//! required = ["order_id"]
//! additionalProperties = false
//! [tools.parameters.properties.order_id]
//! type = "string"
//! pattern = "^SK-[0-9]{4,8}$"
//! [tools.http]
//! method = "GET"                        # GET (default) | POST | PUT | PATCH | DELETE
//! url = "{{base_url}}/orders/{{args.order_id}}"   # substitutions are percent-encoded, one
//!                                       # path segment or query value each; the scheme, host and
//!                                       # port are fixed text or {{base_url}}
//! headers = { Authorization = "Bearer {{secret:shop_api_token}}" }
//! # body = { order = "{{args.order_id}}", caller = "{{call.caller}}" }  # JSON, POST/PUT/PATCH
//! [tools.http.response]
//! pointer = "/order"                    # optional RFC 6901 pointer into the JSON answer
//! fields = ["status", "eta"]            # optional: keys kept (of the object or of each item)
//! max_bytes = 2000                      # optional, 64..=65536; default [tools] max_output_bytes
//!
//! [[tools]]
//! builtin = "create_ticket"             # built-ins: fixed name and parameters;
//! description = "Open a ticket ..."     # description, timeout_ms and filler may be set
//! ```
//!
//! Placeholders are listed in [`template`]. Secrets: header values that carry credentials
//! (`Authorization`, `Cookie`, names containing key/token/secret/password/auth/signature) must
//! use `{{secret:NAME}}`, and a literal that looks like a token (24+ token characters with a
//! digit) or a credential query parameter in the url is refused at load time: tokens never live
//! in profile files. `NAME` is looked up when the tool runs: `[tools] secrets_dir/NAME`,
//! `$CREDENTIALS_DIRECTORY/NAME`, then `VOXMACHINA_SECRET_<NAME>`.
//!
//! Where tools connect: the host of every request is fixed by the profile (see
//! [`template::Template::check_url_authority`]) and every address it resolves to is checked
//! after DNS resolution ([`egress`]): loopback, private, link-local (cloud metadata), unique-local,
//! multicast and other special-purpose addresses are refused unless the profile lists the host
//! in `tools_allow_private_hosts`. A refused request is a `{"error":{"code":"blocked",...}}`
//! object for the model and a `tool_result` event with outcome `blocked` and the reason.
//! Redirects are not followed and `HTTP(S)_PROXY` is not used for tool requests.
//!
//! # At call time
//!
//! The monitor checks the arguments against the schema (`jsonschema` crate), runs the tool on
//! its own task (the event loop never waits on it), bounds it by its timeout, and returns the
//! output (or an error object `{"error":{"code","message",...}}`) as a `function_call_output`
//! followed by `response.create` (OpenAPI `RealtimeClientEvent*`). When a tool runs past `[tools]
//! filler_after_ms` the agent says the filler line (OpenAI developer forum reports).

mod builtin;
pub mod egress;
mod http;
mod run;
mod spec;
pub mod template;

pub(crate) use builtin::dtmf_result;
pub use builtin::{
    Builtin, HISTORY_SCAN_LIMIT, TOOL_CREATE_TICKET, TOOL_LOOKUP_CALL_HISTORY, TOOL_SEND_DTMF,
};
pub use http::MAX_RESPONSE_BYTES;
pub use run::{
    CallInfo, Outcome, SecretLookup, Services, ToolResult, execute, fit_output, redact,
    secret_lookup,
};
pub use spec::{
    BodyTemplate, HttpSpec, MAX_TIMEOUT_MS, ResponseMapping, ToolDef, ToolKind, ToolSet,
    valid_tool_name,
};
pub(crate) use spec::{RawTool, build_tools};
