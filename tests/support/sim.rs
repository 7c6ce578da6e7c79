//! Deterministic simulation of the call state machine (`voxmachina::calls::machine`): a world
//! model (the model link, the store with held writes, tool jobs, call actions, the registry
//! count) and a seeded random history generator, shared by `tests/simulation.rs` (the test
//! command) and `benches/simulate.rs` (millions of histories, `--seed`/`--histories`).
//!
//! A history is a list of [`Act`]s generated from a seed; running it feeds the machine its
//! inputs exactly as the driver (`calls::monitor`) does: every output is executed in order and
//! an output that needs an answer gets it (drawn from the history's answer RNG) before the next
//! input. Invariants are checked after every step and at the end ([`run`]); a failure is shrunk
//! (acts removed while it still fails) and reported with its input trace.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use voxmachina::calls::budget::LimitsConfig;
use voxmachina::calls::link::DtmfError;
use voxmachina::calls::machine::{
    Attach, Input, Machine, MintedToken, ModelEvent, Output, Phase, Reconnected, Setup, State,
};
use voxmachina::calls::record::{Api, CallRecord, CallState, CrmRecord};
use voxmachina::calls::registry::Command;
use voxmachina::prompts::{Profile, ProfileSet};
use voxmachina::tools::{Outcome as ToolOutcome, ToolResult};

/// The profiles a history may run on: plain REFER with a fallback, `connect_refer`,
/// `twilio_dial`, and no escalation.
const PROFILES: &[(&str, &str)] = &[
    (
        "refer",
        r#"default = true
greeting = "Greet the caller."
max_call_duration_secs = 600
[escalation]
target = "tel:+14155550100"
handoff_line = "Connecting you now."
phrases = ["human please"]
dtmf_key = "0"
[escalation.fallback]
target = "sip:queue@pbx.example.com"
apology = "Sorry, nobody is free."
[[tools]]
name = "lookup_order"
description = "Look up an order."
parameters = { type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }
http = { url = "https://api.example.com/orders/{{args.order_id}}" }
[after_call]
summary = true
"#,
    ),
    (
        "connect",
        r#"greeting = "Greet the caller."
max_call_duration_secs = 300
[match]
dialed = ["+18005550177"]
[escalation]
action = "connect_refer"
target = "tel:+18885550123"
handoff_line = "Connecting you to billing."
phrases = ["human please"]
dtmf_key = "0"
[escalation.connect]
queue = "billing"
read_code = true
[[tools]]
name = "lookup_order"
description = "Look up an order."
parameters = { type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }
http = { url = "https://api.example.com/orders/{{args.order_id}}" }
"#,
    ),
    (
        "dial",
        r#"max_call_duration_secs = 900
[match]
dialed = ["+18005550178"]
[escalation]
action = "twilio_dial"
target = "tel:+18885550123"
handoff_line = "Connecting you."
dtmf_key = "0"
[escalation.connect]
queue = "billing"
[escalation.fallback]
target = "sip:queue@pbx.example.com"
"#,
    ),
    (
        "noesc",
        r#"greeting = "Hello."
max_call_duration_secs = 120
[match]
dialed = ["+18005550179"]
[[tools]]
name = "lookup_order"
description = "Look up an order."
parameters = { type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }
http = { url = "https://api.example.com/orders/{{args.order_id}}" }
"#,
    ),
];

fn profiles() -> &'static Vec<Arc<Profile>> {
    static P: OnceLock<Vec<Arc<Profile>>> = OnceLock::new();
    P.get_or_init(|| {
        let dir = Path::new("/sim-profiles");
        let files = PROFILES
            .iter()
            .map(|(name, text)| (dir.join(format!("{name}.toml")), (*text).to_string()))
            .collect();
        let set = ProfileSet::from_texts(dir, files, &|_: &Path| Ok("You help.".to_string()))
            .expect("simulation profiles are valid");
        PROFILES
            .iter()
            .map(|(name, _)| set.get(name).expect("loaded").clone())
            .collect()
    })
}

/// How a history's call is set up.
#[derive(Debug, Clone)]
pub struct CallSetup {
    /// Index into the profiles (refer, connect, dial, noesc).
    pub profile: usize,
    /// How the driver attaches.
    pub attach: Attach,
    /// Realtime or GPT-Live.
    pub api: Api,
    /// The model summary is asked for before hanging up.
    pub model_summary: bool,
    /// HubSpot work on escalation.
    pub crm: bool,
    /// `[tools] filler_after_ms`.
    pub filler_after_ms: u64,
    /// The link cannot be opened (`gone` = 404).
    pub attach_fails: Option<bool>,
}

/// One thing that happens in a history.
#[derive(Debug, Clone, PartialEq)]
pub enum Act {
    /// The caller says something (`escalate` = one of the profile's phrases).
    Caller { escalate: bool },
    /// The agent answers: `response.created`, transcript, optional audio, `response.done`.
    AgentTurn { audio: bool },
    /// `response.created` of a new response only (left in progress).
    ResponseCreated,
    /// `response.done` of the last created response.
    ResponseDone,
    /// The model calls a tool: 0 declared valid, 1 declared invalid, 2 unknown,
    /// 3 `transfer_to_human`, 4 `end_call`.
    ToolCall(u8),
    /// The oldest (`false`) or a random (`true`) running tool job finishes.
    ToolDone { any: bool },
    /// A DTMF key.
    Dtmf(char),
    /// An operator command: transfer (`true`) or hang up.
    Operator(bool),
    /// The link drops (`clean` = with a close frame).
    Drop { clean: bool },
    /// Time passes (ms); due timers fire.
    Advance(u64),
    /// A model event delivered again (duplicate), or an older one (reorder).
    Duplicate,
    /// The store starts (`true`) or stops failing writes.
    StoreFailing(bool),
    /// The machine's state is serialised and a new machine resumes from it.
    Crash,
    /// Shutdown: the driver detaches.
    Shutdown,
    /// GPT-Live `session.closed` with this reason.
    SessionClosed(&'static str),
    /// `transport.answered` / `transport.failed` (outbound GPT-Live).
    Transport { answered: bool },
    /// An `error` event.
    Error,
    /// The audio of the last response starts / stops playing.
    Audio { started: bool },
}

/// A generated history.
#[derive(Debug, Clone)]
pub struct History {
    /// The seed it came from.
    pub seed: u64,
    /// The call's setup.
    pub setup: CallSetup,
    /// What happens, in order.
    pub acts: Vec<Act>,
}

/// Generates the history of `seed`.
pub fn generate(seed: u64) -> History {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let api = if r.random_bool(0.25) {
        Api::Live
    } else {
        Api::Realtime
    };
    let attach = match r.random_range(0..10) {
        0 => Attach::Resume,
        1 => Attach::Reconcile,
        2 if api == Api::Live => Attach::Outbound,
        _ => Attach::Fresh,
    };
    let setup = CallSetup {
        profile: r.random_range(0..PROFILES.len()),
        attach,
        api,
        model_summary: r.random_bool(0.4),
        crm: r.random_bool(0.3),
        filler_after_ms: if r.random_bool(0.7) { 1_500 } else { 0 },
        attach_fails: r.random_bool(0.03).then(|| r.random_bool(0.5)),
    };
    let n = r.random_range(5..60);
    let mut acts = Vec::with_capacity(n);
    for _ in 0..n {
        let act = match r.random_range(0..100) {
            0..=17 => Act::Caller {
                escalate: r.random_bool(0.05),
            },
            18..=35 => Act::AgentTurn {
                audio: r.random_bool(0.3),
            },
            36..=39 => Act::ResponseCreated,
            40..=42 => Act::ResponseDone,
            43..=52 => Act::ToolCall(match r.random_range(0..20) {
                0..=11 => 0,
                12 => 1,
                13 => 2,
                14..=16 => 3,
                _ => 4,
            }),
            53..=60 => Act::ToolDone {
                any: r.random_bool(0.5),
            },
            61..=62 => Act::Dtmf(if r.random_bool(0.5) { '0' } else { '5' }),
            63 => Act::Operator(r.random_bool(0.6)),
            64..=65 => Act::Drop {
                clean: r.random_bool(0.4),
            },
            66..=79 => Act::Advance(match r.random_range(0..10) {
                0..=6 => r.random_range(10..3_000),
                7..=8 => r.random_range(3_000..20_000),
                _ => r.random_range(100_000..1_000_000),
            }),
            80..=84 => Act::Duplicate,
            85..=86 => Act::StoreFailing(r.random_bool(0.5)),
            87..=88 => Act::Crash,
            89 => Act::Shutdown,
            90 => Act::SessionClosed(
                [
                    "remote_hangup",
                    "close_requested",
                    "expired",
                    "connection_lost",
                    "new",
                ][r.random_range(0..5)],
            ),
            91 => Act::Transport {
                answered: r.random_bool(0.8),
            },
            92 => Act::Error,
            _ => Act::Audio {
                started: r.random_bool(0.5),
            },
        };
        acts.push(act);
    }
    History { seed, setup, acts }
}

/// A broken invariant.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What broke.
    pub message: String,
    /// The inputs fed so far (`now` and the input), newest last.
    pub trace: Vec<String>,
}

/// Figures of one history.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Inputs fed.
    pub inputs: u64,
    /// Invariant checks done.
    pub checks: u64,
    /// The call escalated.
    pub escalated: bool,
}

struct World<'a> {
    h: &'a History,
    m: Machine,
    setup: Arc<Setup>,
    answers: ChaCha8Rng,
    now: u64,
    link_open: bool,
    trace_on: bool,
    trace: Vec<String>,
    stats: Stats,
    // The store: rows by kind; transcript rows by (speaker, item_id); writes held while failing.
    store_failing: bool,
    held: Vec<Output>,
    transcript_rows: BTreeMap<(String, String), u32>,
    event_kinds: Vec<String>,
    // What the machine was told and did.
    admitted_items: BTreeSet<(String, String)>,
    jobs: Vec<(String, String)>,
    delivered: Vec<ModelEvent>,
    next_id: u64,
    last_response: Option<String>,
    refers: Vec<String>,
    ended: u32,
    stopped: u32,
    detached: bool,
    registry: i32,
    crm_pending: bool,
    terminal_outputs: u32,
}

fn fail<T>(w: &World<'_>, message: String) -> Result<T, Failure> {
    Err(Failure {
        message,
        trace: w.trace.clone(),
    })
}

/// Runs a history, checking the invariants after every step and at the end.
///
/// # Errors
/// The first invariant broken, with the inputs fed so far.
pub fn run(h: &History, trace: bool) -> Result<Stats, Failure> {
    let profile = profiles()[h.setup.profile].clone();
    let setup = Arc::new(Setup {
        profile: profile.clone(),
        handoff_line_timeout_ms: 8_000,
        refer_outcome_window_ms: 10_000,
        filler_after_ms: h.setup.filler_after_ms,
        filler_line: "One moment.".into(),
        model_summary: h.setup.model_summary,
        summary_timeout_ms: 5_000,
        crm: h.setup.crm,
        log_transcripts: false,
    });
    let start = 1_800_000_000_000u64;
    let mut record = CallRecord::new(
        format!("rtc_sim{}", h.seed),
        h.setup.api,
        "wh_sim",
        voxmachina::calls::machine::ts(start),
    );
    record.profile = profile.name.clone();
    record.caller = Some("+14155550123".into());
    if h.setup.attach != Attach::Reconcile {
        record.state = CallState::Active;
        record.accepted_at = Some(voxmachina::calls::machine::ts(start));
    }
    if h.setup.profile == 2 {
        record.twilio_call_sid = Some("CA0123456789abcdef0123456789abcdef".into());
    }
    let m = Machine::new(
        setup.clone(),
        record,
        &LimitsConfig::default(),
        h.setup.attach,
    );
    let mut w = World {
        h,
        m,
        setup,
        answers: ChaCha8Rng::seed_from_u64(h.seed ^ 0x5eed_a115_0000_0001),
        now: start + 50,
        link_open: false,
        trace_on: trace,
        trace: Vec::new(),
        stats: Stats::default(),
        store_failing: false,
        held: Vec::new(),
        transcript_rows: BTreeMap::new(),
        event_kinds: Vec::new(),
        admitted_items: BTreeSet::new(),
        jobs: Vec::new(),
        delivered: Vec::new(),
        next_id: 0,
        last_response: None,
        refers: Vec::new(),
        ended: 0,
        stopped: 0,
        detached: false,
        registry: 1,
        crm_pending: false,
        terminal_outputs: 0,
    };
    match h.setup.attach_fails {
        Some(gone) => w.feed(Input::AttachFailed {
            error: "simulated".into(),
            gone,
        })?,
        None => {
            w.link_open = true;
            w.feed(Input::LinkOpened)?;
        }
    }
    for act in &h.acts {
        if w.m.is_terminal() || w.ended > 0 {
            break;
        }
        w.act(act)?;
        w.check_state()?;
    }
    if !w.m.is_terminal() && w.ended == 0 {
        // The call runs out: the maximum duration ends it.
        w.advance(2_000_000)?;
        let mut guard = 0;
        while !w.m.is_terminal() && w.ended == 0 {
            guard += 1;
            if guard > 20 {
                return fail(&w, "the call never ended (no deadline left)".into());
            }
            w.act(&Act::ResponseDone)?;
            w.advance(60_000)?;
        }
    }
    w.check_end()?;
    Ok(w.stats)
}

impl World<'_> {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{}", self.next_id)
    }

    fn deliver(&mut self, e: ModelEvent) -> Result<(), Failure> {
        if !self.link_open {
            return Ok(());
        }
        self.delivered.push(e.clone());
        if let ModelEvent::CallerTranscript { item_id, .. } = &e {
            self.admitted_items
                .insert(("caller".into(), item_id.clone()));
        }
        if let ModelEvent::AgentTranscript { item_id, .. } = &e {
            self.admitted_items
                .insert(("agent".into(), item_id.clone()));
        }
        self.feed(Input::Model(e))
    }

    fn act(&mut self, act: &Act) -> Result<(), Failure> {
        match act {
            Act::Caller { escalate } => {
                let item_id = self.id("item");
                let text = if *escalate {
                    "I want a human please"
                } else {
                    "My order is late"
                };
                self.deliver(ModelEvent::CallerTranscript {
                    item_id,
                    text: text.into(),
                })?;
            }
            Act::AgentTurn { audio } => {
                let id = self.id("resp");
                self.last_response = Some(id.clone());
                self.deliver(ModelEvent::ResponseCreated {
                    id: id.clone(),
                    summary: false,
                })?;
                if *audio {
                    self.deliver(ModelEvent::AudioStarted {
                        response_id: id.clone(),
                    })?;
                }
                let item_id = self.id("item");
                self.deliver(ModelEvent::AgentTranscript {
                    item_id,
                    text: "Let me check that.".into(),
                })?;
                self.deliver(done(&id, false))?;
                if *audio {
                    self.deliver(ModelEvent::AudioStopped { response_id: id })?;
                }
            }
            Act::ResponseCreated => {
                let id = self.id("resp");
                self.last_response = Some(id.clone());
                let summary = self.m.state().closing.is_some() && self.answers.random_bool(0.7);
                self.deliver(ModelEvent::ResponseCreated { id, summary })?;
            }
            Act::ResponseDone => {
                let id = self
                    .last_response
                    .clone()
                    .unwrap_or_else(|| "resp_x".into());
                let summary = self.m.state().closing.is_some();
                self.deliver(done(&id, summary))?;
            }
            Act::ToolCall(kind) => {
                let call_id = self.id("call");
                let (name, arguments) = match kind {
                    0 => ("lookup_order", r#"{"order_id":"42"}"#),
                    1 => ("lookup_order", r#"{"order":42}"#),
                    2 => ("no_such_tool", "{}"),
                    3 => ("transfer_to_human", r#"{"reason":"asked"}"#),
                    _ => ("end_call", r#"{"reason":"done"}"#),
                };
                self.deliver(ModelEvent::ToolCall {
                    call_id,
                    name: name.into(),
                    arguments: arguments.into(),
                })?;
            }
            Act::ToolDone { any } => {
                if self.jobs.is_empty() {
                    return Ok(());
                }
                let i = if *any {
                    self.answers.random_range(0..self.jobs.len())
                } else {
                    0
                };
                let (fc_id, name) = self.jobs.remove(i);
                let result = if self.answers.random_bool(0.8) {
                    ToolResult::ok(json!({ "status": "shipped" }))
                } else {
                    ToolResult::error(ToolOutcome::Failed, "http_error", "failed", None)
                };
                let elapsed_us = self.answers.random_range(1_000..5_000_000);
                self.feed(Input::ToolFinished {
                    fc_id,
                    name,
                    result,
                    elapsed_us,
                })?;
            }
            Act::Dtmf(k) => self.deliver(ModelEvent::Dtmf { key: k.to_string() })?,
            Act::Operator(transfer) => {
                let cmd = if *transfer {
                    Command::Transfer("operator".into())
                } else {
                    Command::Hangup("operator".into())
                };
                self.feed(Input::Operator(cmd))?;
            }
            Act::Drop { clean } => {
                if self.link_open {
                    self.link_open = false;
                    self.feed(Input::LinkClosed { clean: *clean })?;
                }
            }
            Act::Advance(ms) => self.advance(*ms)?,
            Act::Duplicate => {
                if !self.delivered.is_empty() {
                    let i = self.answers.random_range(0..self.delivered.len());
                    let e = self.delivered[i].clone();
                    self.deliver(e)?;
                }
            }
            Act::StoreFailing(failing) => {
                self.store_failing = *failing;
                if !failing {
                    self.flush();
                }
            }
            Act::Crash => {
                let json = serde_json::to_string(self.m.state()).expect("state serialises");
                let state: State = serde_json::from_str(&json).expect("state deserialises");
                self.m = Machine::resume(self.setup.clone(), state);
                let again = serde_json::to_string(self.m.state()).expect("state serialises");
                if again != json {
                    return fail(self, "state changed across serialise/resume".into());
                }
                self.trace("crash: resumed from the serialised state".into());
            }
            Act::Shutdown => {
                self.feed(Input::Detach)?;
                if self.m.is_terminal() && !self.detached {
                    self.detached = true;
                    self.registry -= 1;
                }
            }
            Act::SessionClosed(reason) => {
                if self.h.setup.api == Api::Live {
                    self.deliver(ModelEvent::SessionClosed {
                        reason: (*reason).into(),
                        usage: json!({ "input_tokens": 10, "output_tokens": 5, "total_tokens": 15 }),
                    })?;
                }
            }
            Act::Transport { answered } => {
                if self.h.setup.attach == Attach::Outbound {
                    self.deliver(if *answered {
                        ModelEvent::Answered
                    } else {
                        ModelEvent::TransportFailed {
                            kind: Some("call_error".into()),
                            code: Some("busy".into()),
                            message: None,
                        }
                    })?;
                }
            }
            Act::Error => self.deliver(ModelEvent::Error {
                kind: Some("invalid_request_error".into()),
                code: Some("conversation_already_has_active_response".into()),
                message: None,
            })?,
            Act::Audio { started } => {
                // For a line we asked for (handoff line, apology) or the last response.
                let id = self
                    .m
                    .state()
                    .line
                    .as_ref()
                    .and_then(|l| l.response_id.clone())
                    .or_else(|| self.last_response.clone())
                    .unwrap_or_default();
                let e = if *started {
                    ModelEvent::AudioStarted { response_id: id }
                } else {
                    ModelEvent::AudioStopped { response_id: id }
                };
                self.deliver(e)?;
            }
        }
        Ok(())
    }

    /// Time passes; every due deadline fires (as the driver's sleep does).
    fn advance(&mut self, ms: u64) -> Result<(), Failure> {
        let target = self.now + ms;
        let mut fired = 0;
        while let Some((timer, at)) = self.m.next_deadline() {
            if at > target || self.ended > 0 {
                break;
            }
            self.now = self.now.max(at);
            fired += 1;
            if fired > 50 {
                return fail(
                    self,
                    format!("timer {timer:?} stays due after firing 50 times"),
                );
            }
            self.feed(Input::TimerFired)?;
            self.check_state()?;
        }
        self.now = target;
        Ok(())
    }

    fn trace(&mut self, line: String) {
        if self.trace_on {
            self.trace.push(line);
        }
    }

    /// Feeds one input and executes its outputs as the driver does (answers at once).
    fn feed(&mut self, input: Input) -> Result<(), Failure> {
        let was_terminal = self.m.is_terminal();
        self.trace(format!("t={} {input:?}", self.now));
        let mut inbox = vec![input];
        let mut pending = std::collections::VecDeque::new();
        loop {
            if !inbox.is_empty() {
                let mut batch = Vec::new();
                for input in std::mem::take(&mut inbox) {
                    self.stats.inputs += 1;
                    self.m.handle(self.now, input, &mut batch);
                }
                if was_terminal && !batch.is_empty() {
                    return fail(self, format!("output after the machine stopped: {batch:?}"));
                }
                for o in batch.into_iter().rev() {
                    pending.push_front(o);
                }
            }
            let Some(output) = pending.pop_front() else {
                break;
            };
            if let Some(answer) = self.execute(output)? {
                self.trace(format!("  answer {answer:?}"));
                inbox.push(answer);
            }
        }
        Ok(())
    }

    fn execute(&mut self, output: Output) -> Result<Option<Input>, Failure> {
        self.stats.checks += 1;
        if self.stopped > 0 || self.detached {
            return fail(self, format!("output after the end: {output:?}"));
        }
        if self.ended > 0
            && !matches!(
                output,
                Output::Event(_) | Output::SaveRecord | Output::AfterCallWork | Output::Stopped
            )
        {
            return fail(self, format!("{output:?} after the call ended"));
        }
        let r = &mut self.answers;
        let answer = match output {
            Output::Send(text) => {
                if !self.link_open {
                    return fail(self, format!("client event sent on a closed link: {text}"));
                }
                None
            }
            o @ (Output::Event(_) | Output::Transcript(_) | Output::SaveRecord) => {
                if self.store_failing || !self.held.is_empty() {
                    // The resilient store holds the write and answers Ok.
                    self.held.push(o);
                    if !self.store_failing {
                        self.flush();
                    }
                } else {
                    self.store(o);
                }
                None
            }
            Output::StartTool { fc_id, name, .. } => {
                if self.jobs.iter().any(|(f, _)| *f == fc_id) {
                    return fail(self, format!("tool job {fc_id} started twice"));
                }
                self.jobs.push((fc_id, name));
                None
            }
            Output::SendDtmf(_) => Some(Input::DtmfSent {
                result: if self.h.setup.api == Api::Live {
                    Ok(3)
                } else {
                    Err(DtmfError::Unsupported)
                },
                elapsed_us: 100,
            }),
            Output::Refer(t) => {
                self.refer(t.as_uri())?;
                let ok = self.answers.random_bool(0.7);
                Some(Input::ReferAnswered(if ok {
                    Ok(())
                } else {
                    Err("503".into())
                }))
            }
            Output::TwilioDial { target, .. } => {
                self.refer(target.as_uri())?;
                let ok = self.answers.random_bool(0.7);
                Some(Input::DialAnswered(if ok {
                    Ok(())
                } else {
                    Err("20404".into())
                }))
            }
            Output::Hangup => Some(Input::HangupAnswered(if r.random_bool(0.9) {
                Ok(())
            } else {
                Err("500".into())
            })),
            Output::RequestSummary => Some(Input::SummaryRequestSent(
                self.link_open && r.random_bool(0.9),
            )),
            Output::Reconnect => {
                let res = match r.random_range(0..10) {
                    0..=5 => Reconnected::Ok,
                    6..=7 => Reconnected::CallGone,
                    _ => Reconnected::GaveUp,
                };
                self.link_open = res == Reconnected::Ok;
                Some(Input::Reconnected(res))
            }
            Output::PrepareHandover { crm, token, .. } => {
                if crm {
                    if r.random_bool(0.5) {
                        let rec = CrmRecord {
                            contact_id: Some("1".into()),
                            ticket_id: Some("2".into()),
                            error: None,
                        };
                        self.trace("  answer CrmDone".into());
                        let mut batch = Vec::new();
                        self.m.handle(self.now, Input::CrmDone(rec), &mut batch);
                        for o in batch {
                            self.execute(o)?;
                        }
                    } else {
                        self.crm_pending = true;
                    }
                }
                let minted = token.then(|| {
                    if self.answers.random_bool(0.85) {
                        Ok(MintedToken {
                            token: "1234567890".into(),
                            expires_at_ms: self.now + 600_000,
                            hubspot_contact_id: None,
                            hubspot_ticket_id: None,
                        })
                    } else {
                        Err("store down".into())
                    }
                });
                Some(Input::HandoverPrepared(minted))
            }
            Output::Ended { state, reason } => {
                self.ended += 1;
                if self.ended > 1 {
                    return fail(self, format!("ended twice ({state:?}, {reason})"));
                }
                self.link_open = false;
                self.jobs.clear();
                None
            }
            Output::AfterCallWork => Some(Input::AfterCallDone),
            Output::Stopped => {
                self.stopped += 1;
                self.registry -= 1;
                None
            }
        };
        Ok(answer)
    }

    fn refer(&mut self, uri: String) -> Result<(), Failure> {
        if self.refers.contains(&uri) {
            return fail(self, format!("REFER sent twice to {uri} in one hand-off"));
        }
        if !self.refers.is_empty() {
            // The fallback: only after the first target was not confirmed.
            let not_confirmed = self.event_count("transfer_not_confirmed")
                + self.event_count("refer_failed")
                + self.event_count("twilio_dial_failed");
            if not_confirmed == 0 {
                return fail(
                    self,
                    format!("fallback {uri} without a not-confirmed outcome"),
                );
            }
        }
        self.refers.push(uri);
        Ok(())
    }

    fn event_count(&self, kind: &str) -> usize {
        let held = self
            .held
            .iter()
            .filter(|o| matches!(o, Output::Event(e) if e.kind == kind))
            .count();
        held + self.event_kinds.iter().filter(|k| *k == kind).count()
    }

    fn store(&mut self, o: Output) {
        match o {
            Output::Event(e) => self.event_kinds.push(e.kind),
            Output::Transcript(t) => {
                let key = (
                    t.speaker.as_str().to_string(),
                    t.item_id.unwrap_or_default(),
                );
                // The store's unique index on (call_id, speaker, item_id): a replay is a no-op.
                let n = self.transcript_rows.entry(key).or_default();
                *n = (*n + 1).min(1);
            }
            _ => {}
        }
    }

    fn flush(&mut self) {
        for o in std::mem::take(&mut self.held) {
            self.store(o);
        }
    }

    /// Invariants of a live machine, after every step.
    fn check_state(&mut self) -> Result<(), Failure> {
        self.stats.checks += 1;
        let s = self.m.state();
        if s.phase != Phase::Live {
            return Ok(());
        }
        let msg = if s.waiting.is_some() {
            Some(format!("still waiting for {:?} after the step", s.waiting))
        } else if s.line_deadline.is_some() && s.line.is_none() && !s.hangup_when_quiet {
            Some("line timer armed without a line or goodbye".into())
        } else if s.refer_deadline.is_some()
            && !s.handoff.as_ref().is_some_and(|h| h.is_awaiting_outcome())
        {
            Some("REFER outcome timer armed without a REFER awaiting its outcome".into())
        } else if s.filler_at.is_some() && s.running.is_empty() {
            Some("filler timer armed without a running tool".into())
        } else if s.running.keys().collect::<BTreeSet<_>>()
            != self.jobs.iter().map(|(f, _)| f).collect::<BTreeSet<_>>()
        {
            Some(format!(
                "running tools {:?} differ from the jobs {:?}",
                s.running.keys().collect::<Vec<_>>(),
                self.jobs
            ))
        } else if s.handoff.is_some() && s.record.state != CallState::Transferring {
            Some(format!("hand-off while the record is {:?}", s.record.state))
        } else if !self.link_open && s.closing.is_none() {
            Some("live with the link closed".into())
        } else {
            None
        };
        match msg {
            Some(m) => fail(self, m),
            None => Ok(()),
        }
    }

    /// Invariants at the end of the history.
    fn check_end(&mut self) -> Result<(), Failure> {
        self.stats.escalated = self.m.record().escalation.is_some();
        if self.detached {
            if self.ended != 0 || self.registry != 0 {
                return fail(
                    self,
                    "detached call ended or left its registry entry".into(),
                );
            }
            return self.check_silent();
        }
        // The driver's end of call.
        if self.ended != 1 {
            return fail(self, format!("ended {} times", self.ended));
        }
        if self.h.setup.api == Api::Live && self.answers.random_bool(0.5) {
            self.feed(Input::Model(ModelEvent::SessionClosed {
                reason: "close_requested".into(),
                usage: json!({ "total_tokens": 1 }),
            }))?;
        }
        if std::mem::take(&mut self.crm_pending) {
            self.feed(Input::CrmDone(CrmRecord {
                error: Some("late: HubSpot work not finished when the call ended".into()),
                ..CrmRecord::default()
            }))?;
        }
        self.feed(Input::Finish)?;
        self.store_failing = false;
        self.flush();
        let r = self.m.record();
        let mut problems = Vec::new();
        if self.stopped != 1 || !self.m.is_terminal() {
            problems.push(format!("stopped {} times", self.stopped));
        }
        if self.registry != 0 {
            problems.push(format!("registry count {}", self.registry));
        }
        if self.event_count("call_ended") != 1 {
            problems.push(format!(
                "{} call_ended events",
                self.event_count("call_ended")
            ));
        }
        if r.state.is_live() || r.end_reason.is_none() || r.ended_at.is_none() {
            problems.push(format!(
                "record not final: {:?} {:?}",
                r.state, r.end_reason
            ));
        }
        if let Some(esc) = &r.escalation {
            if esc.outcome == "pending" {
                problems.push("escalation without an outcome".into());
            }
            let outcomes = self.event_count("transferred") + self.event_count("transfer_failed");
            if outcomes > 1 {
                problems.push(format!("{outcomes} escalation outcomes"));
            }
            if r.state == CallState::Transferred && self.refers.is_empty() {
                problems.push("transferred without a REFER".into());
            }
            if (esc.outcome == "transferred") != (r.state == CallState::Transferred) {
                problems.push(format!("outcome {} but state {:?}", esc.outcome, r.state));
            }
        } else if !self.refers.is_empty() {
            problems.push("REFER without an escalation".into());
        }
        let stored: BTreeSet<_> = self.transcript_rows.keys().cloned().collect();
        if stored != self.admitted_items {
            let lost: Vec<_> = self.admitted_items.difference(&stored).collect();
            let extra: Vec<_> = stored.difference(&self.admitted_items).collect();
            problems.push(format!("transcript lost {lost:?}, unexpected {extra:?}"));
        }
        if let Some(p) = problems.first() {
            return fail(self, p.clone());
        }
        self.check_silent()
    }

    /// A stopped machine stays silent whatever comes in.
    fn check_silent(&mut self) -> Result<(), Failure> {
        for input in [
            Input::Model(ModelEvent::CallerTranscript {
                item_id: "late".into(),
                text: "hello?".into(),
            }),
            Input::TimerFired,
            Input::Operator(Command::Transfer("late".into())),
            Input::LinkClosed { clean: false },
            Input::Finish,
        ] {
            let mut out = Vec::new();
            self.m.handle(self.now + 1, input, &mut out);
            if !out.is_empty() {
                return fail(self, format!("output after the end: {out:?}"));
            }
        }
        if self.m.next_deadline().is_some() {
            return fail(self, "a timer is armed after the end".into());
        }
        Ok(())
    }
}

fn done(id: &str, summary: bool) -> ModelEvent {
    let response = if summary {
        json!({ "id": id, "status": "completed", "output": [{ "content": [{ "text":
            r#"{"summary":"Caller asked about an order.","intent":"order","outcome":"resolved"}"# }] }],
            "usage": { "input_tokens": 3, "output_tokens": 2, "total_tokens": 5 } })
    } else {
        json!({ "id": id, "status": "completed", "usage": { "input_tokens": 3, "output_tokens": 2, "total_tokens": 5 } })
    };
    ModelEvent::ResponseDone {
        id: id.into(),
        summary,
        usage: serde_json::from_value(response["usage"].clone()).ok(),
        response,
    }
}

/// Runs `h`; on failure shrinks it (removes acts while it still fails) and returns the smallest
/// failing history with its trace.
pub fn run_and_shrink(h: &History) -> Result<Stats, (History, Failure)> {
    match run(h, false) {
        Ok(s) => Ok(s),
        Err(first) => {
            let mut best = h.clone();
            let mut failure = first;
            let mut chunk = best.acts.len().max(1) / 2;
            while chunk >= 1 {
                let mut i = 0;
                while i < best.acts.len() {
                    let mut candidate = best.clone();
                    let end = (i + chunk).min(candidate.acts.len());
                    candidate.acts.drain(i..end);
                    if let Err(f) = run(&candidate, false) {
                        best = candidate;
                        failure = f;
                    } else {
                        i += chunk;
                    }
                }
                chunk /= 2;
            }
            let failure = run(&best, true).err().unwrap_or(failure);
            Err((best, failure))
        }
    }
}

/// The report of a failing seed: the minimal history, its input trace and the replay command.
pub fn report(h: &History, f: &Failure) -> String {
    let mut s = format!(
        "simulation seed {} broke an invariant: {}\nsetup: {:?}\nminimal history ({} acts): {:?}\ntrace:\n",
        h.seed,
        f.message,
        h.setup,
        h.acts.len(),
        h.acts
    );
    for line in &f.trace {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(&format!(
        "replay: cargo bench --bench simulate -- --seed {} --histories 1 --verbose\n",
        h.seed
    ));
    s
}
