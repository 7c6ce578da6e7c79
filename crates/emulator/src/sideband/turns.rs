//! The conversation of one sideband connection: the scripted caller's turns, the model's
//! responses (text, audio, tool calls), input audio with the VAD, truncation and tool turns.

use super::*;

impl Conn {
    pub(super) async fn next_turn(&mut self, ws: &mut WebSocket) -> Result<(), End> {
        let taken = {
            let mut calls = self.shared.calls();
            match calls.get_mut(&self.call_id) {
                Some(call)
                    if call.driver == Some(self.id)
                        && call.view.status == EmuCallStatus::Accepted =>
                {
                    if call.next_turn < call.script.turns.len() {
                        let turn = call.script.turns[call.next_turn].clone();
                        call.next_turn += 1;
                        Taken::Turn(turn, call.next_turn == call.script.turns.len())
                    } else {
                        let newly = !call.view.script_done;
                        call.view.script_done = true;
                        Taken::Done(newly)
                    }
                }
                _ => Taken::NotDriver,
            }
        };
        let (turn, last) = match taken {
            Taken::NotDriver => return Ok(()),
            Taken::Done(newly) => {
                if newly {
                    self.shared.bump();
                    self.shared.emit(EmulatorEvent::ScriptDone {
                        call_id: self.call_id.clone(),
                    });
                }
                return Ok(());
            }
            Taken::Turn(turn, last) => (turn, last),
        };
        match turn {
            Turn::Caller { text } if self.media.is_some() => {
                let unheard = self.media.as_mut().and_then(|m| m.unheard.take());
                match unheard {
                    Some(item_id) => self.heard(ws, &text, item_id).await?,
                    None => {
                        self.phase = Phase::Listen {
                            text,
                            deadline: Instant::now()
                                + Duration::from_millis(self.agent.listen_timeout_ms),
                        }
                    }
                }
            }
            Turn::Dtmf { .. } if self.media.is_some() => {
                tracing::debug!(target: "voxmachina::emulator", call_id = %self.call_id, "dtmf turn ignored on a model session");
                self.phase = Phase::Gap(Instant::now() + self.gap());
            }
            Turn::Caller { text } => {
                self.caller_turn(ws, &text).await?;
                self.phase = Phase::Gap(Instant::now() + self.gap());
            }
            Turn::Dtmf { key } => {
                for k in key.chars() {
                    self.send(
                        ws,
                        json!({
                            "type": "input_audio_buffer.dtmf_event_received",
                            "event": k.to_string(),
                            "received_at": unix_now(),
                        }),
                    )
                    .await?;
                    self.shared.emit(EmulatorEvent::Dtmf {
                        call_id: self.call_id.clone(),
                        key: k.to_string(),
                    });
                }
                self.phase = Phase::Gap(Instant::now() + self.gap());
            }
            Turn::Wait { ms } => {
                self.phase = Phase::Gap(Instant::now() + Duration::from_millis(ms))
            }
            Turn::Tool { name, arguments } => {
                let tool_call_id = self.tool_turn(ws, &name, &arguments).await?;
                self.phase = Phase::ToolOutput {
                    tool_call_id,
                    deadline: Instant::now() + self.tool_timeout(),
                };
            }
            Turn::Drop => {
                self.finish_script_if(last);
                return Err(End::Dropped);
            }
            Turn::Hangup => {
                if let Some(call) = self.shared.calls().get_mut(&self.call_id) {
                    call.view.status = EmuCallStatus::CallerHungUp;
                    call.control_all(Control::Drop);
                }
                self.shared.emit(EmulatorEvent::Hangup {
                    call_id: self.call_id.clone(),
                    by: HangupBy::Caller,
                });
                self.finish_script_if(last);
                return Err(End::Dropped);
            }
        }
        Ok(())
    }

    pub(super) fn finish_script_if(&self, last: bool) {
        if last {
            if let Some(call) = self.shared.calls().get_mut(&self.call_id) {
                call.view.script_done = true;
            }
            self.shared.emit(EmulatorEvent::ScriptDone {
                call_id: self.call_id.clone(),
            });
        }
        self.shared.bump();
    }

    pub(super) async fn caller_turn(&mut self, ws: &mut WebSocket, text: &str) -> Result<(), End> {
        let (transcribe, previous, start_ms) = {
            let calls = self.shared.calls();
            let Some(call) = calls.get(&self.call_id) else {
                return Ok(());
            };
            let start_ms = call
                .accepted_at
                .map(|t| t.elapsed().as_millis() as u64)
                .unwrap_or(0);
            (
                transcription_on(&call.session),
                call.last_item_id.clone(),
                start_ms,
            )
        };
        let item_id = hex_id("item_");
        let words = text.split_whitespace().count() as u64;
        let end_ms = start_ms + 300 + 250 * words;
        self.send(
            ws,
            json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": start_ms, "item_id": item_id}),
        )
        .await?;
        self.speech_stopped(ws, end_ms, &item_id, previous.as_deref())
            .await?;
        if transcribe {
            self.send(
                ws,
                json!({
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": text,
                    "usage": {"type": "duration", "seconds": (end_ms - start_ms).div_ceil(1000)},
                }),
            )
            .await?;
        }
        let auto = {
            let mut calls = self.shared.calls();
            let Some(call) = calls.get_mut(&self.call_id) else {
                return Ok(());
            };
            call.view.caller_lines.push(text.to_string());
            call.last_item_id = Some(item_id);
            self.agent.auto_reply
                && call.view.status == EmuCallStatus::Accepted
                && create_response_on(&call.session)
        };
        self.shared.bump();
        self.shared.emit(EmulatorEvent::Transcript {
            call_id: self.call_id.clone(),
            speaker: Speaker::Caller,
            text: text.to_string(),
        });
        if auto {
            self.respond(ws, None).await?;
        }
        Ok(())
    }

    /// Emits one agent response. `request` is the `response` object of a client
    /// `response.create` (`None` for a server-VAD auto reply).
    pub(super) async fn respond(
        &mut self,
        ws: &mut WebSocket,
        request: Option<&Value>,
    ) -> Result<(), End> {
        let quoted = request
            .and_then(|r| r.get("instructions"))
            .and_then(Value::as_str)
            .and_then(quoted_passage);
        let out_of_band = request
            .and_then(|r| r.get("conversation"))
            .and_then(Value::as_str)
            == Some("none");
        let text_only = request
            .and_then(|r| r.get("output_modalities"))
            .and_then(Value::as_array)
            .is_some_and(|m| !m.iter().any(|v| v == "audio"));
        let (text, modalities, conversation_id, voice, out_format) = {
            let mut calls = self.shared.calls();
            let Some(call) = calls.get_mut(&self.call_id) else {
                return Ok(());
            };
            let text = match quoted {
                _ if out_of_band && text_only => {
                    let text = call
                        .script
                        .agent
                        .summary
                        .clone()
                        .unwrap_or_else(|| NO_SUMMARY_TEXT.to_string());
                    call.view.out_of_band_texts.push(text.clone());
                    text
                }
                Some(q) => q,
                None if call.responses == 0 && call.next_turn == 0 => {
                    call.script.agent.greeting.clone()
                }
                None => {
                    let reply = call
                        .script
                        .agent
                        .replies
                        .get(call.next_reply)
                        .cloned()
                        .unwrap_or_else(|| FALLBACK_REPLY.to_string());
                    call.next_reply += 1;
                    reply
                }
            };
            call.responses += 1;
            let modalities = request
                .and_then(|r| r.get("output_modalities"))
                .filter(|m| m.is_array())
                .or_else(|| call.session.get("output_modalities"))
                .cloned()
                .unwrap_or_else(|| json!(["audio"]));
            let voice = call
                .session
                .pointer("/audio/output/voice")
                .cloned()
                .unwrap_or(Value::Null);
            let conversation = if out_of_band {
                Value::Null
            } else {
                Value::String(call.conversation_id.clone())
            };
            let out_format = if call.media.is_some() {
                format_of(&call.session, "output")
            } else {
                "audio/pcmu".to_string()
            };
            (text, modalities, conversation, voice, out_format)
        };
        let audio = modalities
            .as_array()
            .is_none_or(|m| m.iter().any(|v| v == "audio"));
        let metadata = request
            .and_then(|r| r.get("metadata"))
            .cloned()
            .unwrap_or(Value::Null);
        let response_id = hex_id("resp_");
        let item_id = hex_id("item_");
        self.send(
            ws,
            json!({
                "type": "response.created",
                "response": {
                    "object": "realtime.response",
                    "id": response_id,
                    "status": "in_progress",
                    "status_details": null,
                    "output": [],
                    "conversation_id": conversation_id,
                    "output_modalities": modalities,
                    "max_output_tokens": "inf",
                    "audio": {"output": {"format": {"type": out_format}, "voice": voice}},
                    "usage": null,
                    "metadata": metadata,
                }
            }),
        )
        .await?;
        if audio && self.media.is_some() {
            self.speak(ws, &response_id, &item_id, &text, &out_format)
                .await?;
        }
        let (delta_type, done_type, done_field, content_type) = if audio {
            (
                "response.output_audio_transcript.delta",
                "response.output_audio_transcript.done",
                "transcript",
                "output_audio",
            )
        } else {
            (
                "response.output_text.delta",
                "response.output_text.done",
                "text",
                "output_text",
            )
        };
        for chunk in delta_chunks(&text) {
            self.send(
                ws,
                json!({
                    "type": delta_type,
                    "response_id": response_id,
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": chunk,
                }),
            )
            .await?;
        }
        self.send(
            ws,
            json!({
                "type": done_type,
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                done_field: text,
            }),
        )
        .await?;
        let output_tokens = 2 * text.split_whitespace().count() as u64 + 1;
        let input_tokens = 120;
        self.send(
            ws,
            json!({
                "type": "response.done",
                "response": {
                    "object": "realtime.response",
                    "id": response_id,
                    "status": "completed",
                    "status_details": null,
                    "output": [{
                        "id": item_id,
                        "object": "realtime.item",
                        "type": "message",
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": content_type, done_field: text}],
                    }],
                    "conversation_id": conversation_id,
                    "output_modalities": modalities,
                    "max_output_tokens": "inf",
                    "audio": {"output": {"format": {"type": out_format}, "voice": voice}},
                    "usage": {
                        "total_tokens": input_tokens + output_tokens,
                        "input_tokens": input_tokens,
                        "output_tokens": output_tokens,
                    },
                    "metadata": metadata,
                }
            }),
        )
        .await?;
        if let Some(call) = self.shared.calls().get_mut(&self.call_id) {
            if !out_of_band {
                call.last_item_id = Some(item_id);
            }
            if audio {
                call.view.agent_lines.push(text.clone());
            }
        }
        self.shared.bump();
        if audio {
            self.shared.emit(EmulatorEvent::Transcript {
                call_id: self.call_id.clone(),
                speaker: Speaker::Agent,
                text,
            });
        }
        Ok(())
    }

    /// Model sessions: the audio of an agent response (see the module docs).
    pub(super) async fn speak(
        &mut self,
        ws: &mut WebSocket,
        response_id: &str,
        item_id: &str,
        text: &str,
        format: &str,
    ) -> Result<(), End> {
        let words = text.split_whitespace().count() as u64;
        let duration_ms = (200 + 250 * words).min(10_000);
        let bytes = agent_audio(format, duration_ms);
        let per_ms = if format == "audio/pcmu" { 8 } else { 48 };
        let chunk = (self.agent.audio_chunk_ms.max(1) * per_ms) as usize;
        for part in bytes.chunks(chunk) {
            self.send(
                ws,
                json!({
                    "type": "response.output_audio.delta",
                    "response_id": response_id,
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": base64::engine::general_purpose::STANDARD.encode(part),
                }),
            )
            .await?;
        }
        self.send(
            ws,
            json!({
                "type": "response.output_audio.done",
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
            }),
        )
        .await?;
        if let Some(log) = self
            .shared
            .calls()
            .get_mut(&self.call_id)
            .and_then(|c| c.media.as_mut())
        {
            log.agent_audio.push(AgentAudio {
                response_id: response_id.to_string(),
                item_id: item_id.to_string(),
                format: format.to_string(),
                bytes,
                duration_ms,
            });
        }
        Ok(())
    }

    /// Model sessions: `input_audio_buffer.append`.
    pub(super) async fn on_append(&mut self, ws: &mut WebSocket, value: &Value) -> Result<(), End> {
        let decoded = value
            .get("audio")
            .and_then(Value::as_str)
            .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok());
        let (format, silence_ms) = {
            let calls = self.shared.calls();
            let Some(call) = calls.get(&self.call_id) else {
                return Ok(());
            };
            let silence = call
                .session
                .pointer("/audio/input/turn_detection/silence_duration_ms")
                .and_then(Value::as_u64)
                .unwrap_or(500);
            (format_of(&call.session, "input"), silence)
        };
        let Some(bytes) = decoded else {
            if let Some(log) = self
                .shared
                .calls()
                .get_mut(&self.call_id)
                .and_then(|c| c.media.as_mut())
            {
                log.bad_appends += 1;
            }
            return self
                .send(
                    ws,
                    json!({"type": "error", "error": {
                        "type": "invalid_request_error",
                        "code": "invalid_value",
                        "message": "Invalid 'audio'. Expected base64-encoded audio bytes.",
                        "param": "audio",
                        "event_id": value.get("event_id"),
                    }}),
                )
                .await;
        };
        let (samples, rate): (Vec<i16>, u32) = if format == "audio/pcmu" {
            let mut pcm = Vec::with_capacity(bytes.len());
            voxmachina::media::g711::decode_into(&bytes, &mut pcm);
            (pcm, 8_000)
        } else {
            (
                bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect(),
                24_000,
            )
        };
        if let Some(log) = self
            .shared
            .calls()
            .get_mut(&self.call_id)
            .and_then(|c| c.media.as_mut())
        {
            log.appends += 1;
            log.input_format = format;
            log.audio_in.extend_from_slice(&bytes);
        }
        let events = match self.media.as_mut() {
            Some(m) => m.vad.feed(&samples, rate, silence_ms),
            None => return Ok(()),
        };
        for ev in events {
            match ev {
                VadEvent::Started(at) => {
                    let item_id = hex_id("item_");
                    if let Some(m) = self.media.as_mut() {
                        m.speech_item = Some(item_id.clone());
                    }
                    self.send(
                        ws,
                        json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": at, "item_id": item_id}),
                    )
                    .await?;
                    self.shared.emit(EmulatorEvent::Speech {
                        call_id: self.call_id.clone(),
                        started: true,
                        at_ms: at,
                    });
                }
                VadEvent::Stopped { start, end } => {
                    self.utterance(ws, start, end).await?;
                }
            }
        }
        Ok(())
    }

    /// `input_audio_buffer.speech_stopped` then `input_audio_buffer.committed` for `item_id`
    /// (speech ended at `end_ms`, the item follows `previous`).
    pub(super) async fn speech_stopped(
        &self,
        ws: &mut WebSocket,
        end_ms: u64,
        item_id: &str,
        previous: Option<&str>,
    ) -> Result<(), End> {
        self.send(
            ws,
            json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms, "item_id": item_id}),
        )
        .await?;
        self.send(
            ws,
            json!({"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id}),
        )
        .await
    }

    /// Model sessions: the VAD heard an utterance end.
    pub(super) async fn utterance(
        &mut self,
        ws: &mut WebSocket,
        start: u64,
        end: u64,
    ) -> Result<(), End> {
        let item_id = self
            .media
            .as_mut()
            .and_then(|m| m.speech_item.take())
            .unwrap_or_else(|| hex_id("item_"));
        let previous = {
            let mut calls = self.shared.calls();
            let Some(call) = calls.get_mut(&self.call_id) else {
                return Ok(());
            };
            if let Some(log) = call.media.as_mut() {
                log.utterances.push((start, end));
            }
            call.last_item_id.replace(item_id.clone())
        };
        self.shared.bump();
        self.speech_stopped(ws, end, &item_id, previous.as_deref())
            .await?;
        self.shared.emit(EmulatorEvent::Speech {
            call_id: self.call_id.clone(),
            started: false,
            at_ms: end,
        });
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Listen { text, .. } => self.heard(ws, &text, item_id).await?,
            other => {
                self.phase = other;
                if let Some(m) = self.media.as_mut() {
                    m.unheard = Some(item_id);
                }
            }
        }
        Ok(())
    }

    /// Model sessions: a caller turn's utterance `item_id` was heard: transcript, then the
    /// automatic answer, then the next turn after the gap.
    pub(super) async fn heard(
        &mut self,
        ws: &mut WebSocket,
        text: &str,
        item_id: String,
    ) -> Result<(), End> {
        let (transcribe, auto) = {
            let mut calls = self.shared.calls();
            let Some(call) = calls.get_mut(&self.call_id) else {
                return Ok(());
            };
            call.view.caller_lines.push(text.to_string());
            (
                transcription_on(&call.session),
                self.agent.auto_reply
                    && call.view.status == EmuCallStatus::Accepted
                    && create_response_on(&call.session),
            )
        };
        self.shared.bump();
        if transcribe {
            self.send(
                ws,
                json!({
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": text,
                    "usage": {"type": "duration", "seconds": 1},
                }),
            )
            .await?;
        }
        self.shared.emit(EmulatorEvent::Transcript {
            call_id: self.call_id.clone(),
            speaker: Speaker::Caller,
            text: text.to_string(),
        });
        if auto {
            self.respond(ws, None).await?;
        }
        self.phase = Phase::Gap(Instant::now() + self.gap());
        Ok(())
    }

    /// Model sessions: `conversation.item.truncate`.
    pub(super) async fn on_truncate(
        &mut self,
        ws: &mut WebSocket,
        value: &Value,
    ) -> Result<(), End> {
        let item_id = value
            .get("item_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let content_index = value
            .get("content_index")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let audio_end_ms = value.get("audio_end_ms").and_then(Value::as_u64);
        let accepted = {
            let mut calls = self.shared.calls();
            let Some(log) = calls.get_mut(&self.call_id).and_then(|c| c.media.as_mut()) else {
                return Ok(());
            };
            let duration = log
                .agent_audio
                .iter()
                .find(|a| a.item_id == item_id)
                .map(|a| a.duration_ms);
            let accepted = matches!((duration, audio_end_ms), (Some(d), Some(ms)) if ms <= d);
            log.truncates.push(Truncation {
                item_id: item_id.clone(),
                audio_end_ms: audio_end_ms.unwrap_or(0),
                accepted,
            });
            accepted
        };
        self.shared.bump();
        if accepted {
            let ms = audio_end_ms.unwrap_or(0);
            self.shared.emit(EmulatorEvent::Truncated {
                call_id: self.call_id.clone(),
                item_id: item_id.clone(),
                audio_end_ms: ms,
            });
            self.send(
                ws,
                json!({"type": "conversation.item.truncated", "item_id": item_id, "content_index": content_index, "audio_end_ms": ms}),
            )
            .await
        } else {
            self.send(
                ws,
                json!({"type": "error", "error": {
                    "type": "invalid_request_error",
                    "code": "invalid_value",
                    "message": "Audio content end ms is out of range, or the item has no audio.",
                    "param": "audio_end_ms",
                    "event_id": value.get("event_id"),
                }}),
            )
            .await
        }
    }

    /// Emits a function call; returns its `call_id`.
    pub(super) async fn tool_turn(
        &mut self,
        ws: &mut WebSocket,
        name: &str,
        arguments: &Value,
    ) -> Result<String, End> {
        let (conversation_id, modalities) = {
            let mut calls = self.shared.calls();
            let Some(call) = calls.get_mut(&self.call_id) else {
                return Err(End::Dropped);
            };
            call.responses += 1;
            (
                call.conversation_id.clone(),
                call.session
                    .get("output_modalities")
                    .cloned()
                    .unwrap_or_else(|| json!(["audio"])),
            )
        };
        let response_id = hex_id("resp_");
        let item_id = hex_id("item_");
        let tool_call_id = hex_id("call_");
        let args = arguments.to_string();
        let item = json!({
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "completed",
            "call_id": tool_call_id,
            "name": name,
            "arguments": args,
        });
        self.send(
            ws,
            json!({
                "type": "response.created",
                "response": {
                    "object": "realtime.response",
                    "id": response_id,
                    "status": "in_progress",
                    "status_details": null,
                    "output": [],
                    "conversation_id": conversation_id,
                    "output_modalities": modalities,
                    "usage": null,
                }
            }),
        )
        .await?;
        self.send(
            ws,
            json!({
                "type": "response.function_call_arguments.done",
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "call_id": tool_call_id,
                "name": name,
                "arguments": args,
            }),
        )
        .await?;
        if let Some(call) = self.shared.calls().get_mut(&self.call_id) {
            call.tool_sent_at.insert(
                tool_call_id.clone(),
                (std::time::Instant::now(), name.to_string()),
            );
        }
        self.send(
            ws,
            json!({
                "type": "response.output_item.done",
                "response_id": response_id,
                "output_index": 0,
                "item": item,
            }),
        )
        .await?;
        self.send(
            ws,
            json!({
                "type": "response.done",
                "response": {
                    "object": "realtime.response",
                    "id": response_id,
                    "status": "completed",
                    "status_details": null,
                    "output": [item],
                    "conversation_id": conversation_id,
                    "output_modalities": modalities,
                    "usage": {"total_tokens": 140, "input_tokens": 120, "output_tokens": 20},
                }
            }),
        )
        .await?;
        if let Some(call) = self.shared.calls().get_mut(&self.call_id) {
            call.last_item_id = Some(item_id);
        }
        self.shared.emit(EmulatorEvent::ToolCall {
            call_id: self.call_id.clone(),
            tool_call_id: tool_call_id.clone(),
            name: name.to_string(),
            arguments: args,
        });
        Ok(tool_call_id)
    }
}
