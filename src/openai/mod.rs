//! OpenAI call control (REST `/realtime/calls/{call_id}/...`) and the sideband WebSocket.
