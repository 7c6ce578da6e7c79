//! [`Emulator`]: starting it, placing calls (signed webhooks), and what tests read back.

use super::*;

impl Emulator {
    /// Binds `127.0.0.1:0` and serves the REST API and the sideband on that one port.
    ///
    /// # Errors
    /// The bind error, or a failure to build the HTTP client used for webhook deliveries.
    pub async fn start(cfg: EmulatorConfig) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(std::io::Error::other)?;
        let (version, _) = watch::channel(0);
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            api_key: cfg.api_key,
            addr,
            cancel: CancellationToken::new(),
            calls: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            version,
            events,
            http,
            model_scripts: Mutex::new(VecDeque::new()),
            model_sessions: Mutex::new(Vec::new()),
            recorder: record::Recorder::from_env(),
        });
        let app = rest::router(shared.clone());
        let cancel = shared.cancel.clone();
        tokio::spawn(async move {
            // Events are small frames written back to back: without TCP_NODELAY, Nagle's
            // algorithm holds the second one until the first is acknowledged (delayed ACK,
            // ~40 ms on Linux), which real servers do not do to a Realtime socket.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                cancel.cancelled().await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(target: "voxmachina::emulator", "emulator server stopped: {e}");
            }
        });
        tracing::info!(target: "voxmachina::emulator", %addr, "OpenAI emulator listening");
        Ok(Emulator {
            handle: Arc::new(Handle { shared }),
        })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Appends every REST request body and sideband/model-session client event received from
    /// now on to `path`, one JSON line each (shape in [`record`]).
    ///
    /// # Errors
    /// When the file cannot be created or opened.
    pub fn record_to(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.shared().recorder.record_to(path)
    }

    /// The socket address the servers listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared().addr
    }

    /// The REST base URL, `http://127.0.0.1:PORT/v1` (the controller's `openai.base_url`).
    pub fn rest_base_url(&self) -> String {
        format!("http://{}/v1", self.shared().addr)
    }

    /// The sideband URL, `ws://127.0.0.1:PORT/v1/realtime` (the controller's
    /// `openai.sideband_url`; it connects to `{this}?call_id=...`).
    pub fn sideband_url(&self) -> String {
        format!("ws://{}/v1/realtime", self.shared().addr)
    }

    /// Stops the servers now and drops live sideband sockets without a close frame. Happens
    /// anyway when the last handle is dropped.
    pub fn shutdown(&self) {
        self.shared().cancel.cancel();
    }

    /// Registers a pending call driven by `script` and returns its `realtime.call.incoming` event
    /// body (OpenAPI `WebhookRealtimeCallIncoming`): `object` `"event"`, `id` `evt_<32 hex>`,
    /// `type`, `created_at` (now, Unix seconds) and `data` with `call_id` `rtc_<32 hex>`,
    /// `sip_media_security` (omitted when the script has none) and `sip_headers`: `From`, `To`,
    /// `Call-ID` (a random UUID), then the script's extra headers in order.
    pub fn new_call(&self, script: Script) -> PendingCall {
        let call_id = hex_id("rtc_");
        let event_id = hex_id("evt_");
        let sip_call_id = {
            let h = format!("{:032x}", rand::random::<u128>());
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        };
        let mut sip_headers = vec![
            SipHeader {
                name: "From",
                value: &script.call.from,
            },
            SipHeader {
                name: "To",
                value: &script.call.to,
            },
            SipHeader {
                name: "Call-ID",
                value: &sip_call_id,
            },
        ];
        sip_headers.extend(
            script
                .call
                .headers
                .iter()
                .map(|(n, v)| SipHeader { name: n, value: v }),
        );
        let event = IncomingEvent {
            object: "event",
            id: &event_id,
            kind: "realtime.call.incoming",
            created_at: unix_now(),
            data: IncomingData {
                call_id: &call_id,
                sip_media_security: script.call.media_security.as_deref(),
                sip_headers,
            },
        };
        let body = Bytes::from(serde_json::to_vec(&event).expect("event serializes"));
        let state = CallState {
            view: CallView {
                call_id: call_id.clone(),
                status: EmuCallStatus::Pending,
                accept_count: 0,
                accept_body: None,
                reject_body: None,
                refer_targets: Vec::new(),
                hangup_count: 0,
                sideband_connections: 0,
                client_events: Vec::new(),
                function_outputs: Vec::new(),
                agent_lines: Vec::new(),
                caller_lines: Vec::new(),
                script_done: false,
                tool_round_trips: Vec::new(),
                out_of_band_texts: Vec::new(),
            },
            script,
            session_id: hex_id("sess_"),
            conversation_id: hex_id("conv_"),
            session: Value::Null,
            next_turn: 0,
            next_reply: 0,
            responses: 0,
            accept_faults_used: 0,
            refers: 0,
            last_item_id: None,
            accepted_at: None,
            conns: Vec::new(),
            driver: None,
            tool_sent_at: HashMap::new(),
            media: None,
        };
        self.shared().calls().insert(call_id.clone(), state);
        self.shared().bump();
        PendingCall {
            call_id,
            body,
            event_id,
        }
    }

    /// Signs `body` the way OpenAI does (Standard Webhooks `v1` over
    /// `"{webhook_id}.{timestamp}.{body}"`, the Standard Webhooks spec) and POSTs it to `url` with
    /// the headers of OpenAI's webhooks guide: `webhook-id`, `webhook-timestamp` (`timestamp`, Unix
    /// seconds), `webhook-signature` (`v1,<base64>`), `user-agent` [`WEBHOOK_USER_AGENT`] and
    /// `content-type: application/json`. Redirects are not followed. Returns the HTTP status.
    ///
    /// # Errors
    /// [`EmulatorError::Secret`] for a malformed `whsec_` secret, [`EmulatorError::Http`] when
    /// the request could not be completed (15 s timeout).
    pub async fn deliver(
        &self,
        url: &str,
        secret: &str,
        webhook_id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Result<u16, EmulatorError> {
        let verifier = Verifier::new(secret, 300)?;
        let ts = timestamp.to_string();
        let signature = verifier.sign(webhook_id, &ts, body);
        let resp = self
            .shared()
            .http
            .post(url)
            .header("user-agent", WEBHOOK_USER_AGENT)
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", &ts)
            .header("webhook-signature", signature)
            .body(body.to_vec())
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }

    /// [`Emulator::new_call`] then [`Emulator::deliver`] with a fresh `webhook-id`
    /// (`wh_<32 hex>`) and the current time. The call stays registered even if delivery fails.
    ///
    /// # Errors
    /// As [`Emulator::deliver`].
    pub async fn place_call(
        &self,
        webhook_url: &str,
        secret: &str,
        script: Script,
    ) -> Result<PlacedCall, EmulatorError> {
        let pending = self.new_call(script);
        let webhook_id = hex_id("wh_");
        let status = self
            .deliver(webhook_url, secret, &webhook_id, unix_now(), &pending.body)
            .await?;
        self.shared().emit(EmulatorEvent::WebhookDelivered {
            call_id: pending.call_id.clone(),
            webhook_id: webhook_id.clone(),
            status,
        });
        Ok(PlacedCall {
            call_id: pending.call_id,
            webhook_id,
            status,
        })
    }

    /// The caller's SIP leg ends from the far side (a BYE), e.g. Twilio dropping its
    /// `<Dial><Sip>` leg after the parent call was redirected (a `twilio_dial` hand-off): a live
    /// call becomes [`EmuCallStatus::CallerHungUp`] and its sideband connections get a close
    /// frame, as when OpenAI ends the session. False for an unknown or already ended call.
    pub fn end_from_far_side(&self, call_id: &str) -> bool {
        let shared = self.shared();
        let mut calls = shared.calls();
        let Some(call) = calls
            .get_mut(call_id)
            .filter(|c| c.view.status == EmuCallStatus::Accepted)
        else {
            return false;
        };
        call.view.status = EmuCallStatus::CallerHungUp;
        call.control_all(Control::Close);
        drop(calls);
        shared.bump();
        shared.emit(EmulatorEvent::Hangup {
            call_id: call_id.to_string(),
            by: HangupBy::Caller,
        });
        true
    }

    /// A snapshot of the call, or `None` for an unknown id.
    pub fn call(&self, call_id: &str) -> Option<CallView> {
        self.shared().calls().get(call_id).map(|c| c.view.clone())
    }

    /// Waits until the call exists and `pred` holds for it, re-checking on every state change.
    /// Returns the matching snapshot, or `None` after `timeout`.
    pub async fn wait_for(
        &self,
        call_id: &str,
        timeout: Duration,
        pred: impl Fn(&CallView) -> bool,
    ) -> Option<CallView> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared().version.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(view) = self.call(call_id).filter(|v| pred(v)) {
                return Some(view);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Every REST request answered so far, in arrival order: the four call-control endpoints
    /// and any other path (answered 404). Sideband upgrade requests are not listed; their
    /// outcome shows in [`CallView::sideband_connections`] and the client's HTTP response.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared()
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Queues the script of the next Realtime model session (`GET {sideband_url}?model=...`).
    /// Sessions opened with no script queued get [`Script::new`]. Only the `[agent]` table and
    /// the turns apply; see [`sideband`] ("Model sessions") for how turns play there.
    pub fn push_model_script(&self, script: Script) {
        self.shared()
            .model_scripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(script);
    }

    /// Ids (`sess_...`) of the model sessions opened so far, in order. Each is also a call id
    /// for [`Emulator::call`], [`Emulator::wait_for`] and [`Emulator::media`].
    pub fn model_sessions(&self) -> Vec<String> {
        self.shared()
            .model_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits up to `timeout` for the `n`-th (1-based) model session to open; its id.
    pub async fn wait_model_session(&self, n: usize, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared().version.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(id) = self.model_sessions().get(n.saturating_sub(1)) {
                return Some(id.clone());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// What model session `id` heard and said so far, or `None` for an unknown id or a SIP call.
    pub fn media(&self, id: &str) -> Option<MediaLog> {
        self.shared().calls().get(id).and_then(|c| c.media.clone())
    }

    /// A live feed of [`EmulatorEvent`]s from now on (buffer of 1024; a slow reader sees
    /// `RecvError::Lagged`).
    pub fn events(&self) -> broadcast::Receiver<EmulatorEvent> {
        self.shared().events.subscribe()
    }
}
