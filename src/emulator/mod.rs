//! A local OpenAI SIP emulator: call-control REST and sideband WebSocket on 127.0.0.1, driven by
//! a scripted caller. Backs `voxmachina demo` and the integration tests.
