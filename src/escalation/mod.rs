//! Escalation to a human.
//!
//! Triggers ([`Trigger`]): a caller phrase ([`phrases::PhraseMatcher`]), the model calling the
//! `transfer_to_human` tool, the profile's DTMF key, or the operator API.
//!
//! The hand-off ([`Handoff`]) is a small state machine the call monitor drives:
//!
//! 1. the agent says the profile's handoff line ([`Step::Say`]);
//! 2. `/refer` to the first target ([`Step::Refer`]). A 200 from `/refer` only means the REFER was
//!    relayed (<https://developers.openai.com/api/docs/guides/realtime-sip>; OpenAI developer forum
//!    reports of `/refer` answering 200 with no transfer): no event reports the outcome, so the
//!    monitor waits for the sideband to close within the refer outcome window; closing means the
//!    caller left OpenAI for the target ([`Outcome::Transferred`]);
//! 3. when `/refer` fails or the window passes, the next target (the profile's fallback) is tried;
//! 4. when every target failed, the agent says the apology ([`Step::Say`]), the call is hung up
//!    ([`Step::Hangup`]) and the outcome is [`Outcome::Failed`].

pub mod connect;
pub mod phrases;
pub mod twilio_dial;

use std::collections::VecDeque;
use std::time::Duration;

use crate::sip::TransferTarget;

/// What an escalation does (`[escalation] action` of a profile).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Action {
    /// `refer` (default): SIP REFER to the target, then to the fallback.
    #[default]
    Refer,
    /// `connect_refer`: mint a handover token for an Amazon Connect contact flow ([`connect`]),
    /// then REFER to the Connect number (the target, `tel:+E164`), then to the fallback.
    ConnectRefer(ConnectHandover),
    /// `twilio_dial`: for calls that reach OpenAI through Twilio Programmable Voice
    /// (`<Dial><Sip>` with the parent `CallSid` in an `X-Twilio-CallSid` header): mint the same
    /// handover token as `connect_refer`, then redirect the parent Twilio call through the REST
    /// API to `<Dial><Number sendDigits="wwww{token}#">` the Connect number (the target,
    /// `tel:+E164`), which drops the AI leg ([`twilio_dial`]); on failure REFER to the fallback.
    TwilioDial(ConnectHandover),
}

impl Action {
    /// `refer`, `connect_refer` or `twilio_dial` (record field and metric label).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Refer => "refer",
            Self::ConnectRefer(_) => "connect_refer",
            Self::TwilioDial(_) => "twilio_dial",
        }
    }

    /// The `[escalation.connect]` settings of a hand-off that mints a handover token
    /// (`connect_refer`, `twilio_dial`); `None` for plain `refer`.
    pub fn handover(&self) -> Option<&ConnectHandover> {
        match self {
            Self::Refer => None,
            Self::ConnectRefer(c) | Self::TwilioDial(c) => Some(c),
        }
    }
}

/// `[escalation.connect]`: what a `connect_refer` or `twilio_dial` hand-off puts in the token's
/// payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectHandover {
    /// `queue`: the queue the contact flow should route to (`route_to_queue`).
    pub queue: Option<String>,
    /// `intent`: the intent label for routing (e.g. `billing`).
    pub intent: Option<String>,
    /// `priority`: the priority label (e.g. `high`).
    pub priority: Option<String>,
    /// `token_ttl_secs`: how long the token can be redeemed (default 600 s).
    pub token_ttl: Duration,
    /// `read_code`: the handoff line ends with the code read out digit by digit, for callers
    /// whose number the contact centre cannot match (default true).
    pub read_code: bool,
}

impl Default for ConnectHandover {
    fn default() -> Self {
        Self {
            queue: None,
            intent: None,
            priority: None,
            token_ttl: Duration::from_secs(crate::store::tokens::DEFAULT_TOKEN_TTL_SECS),
            read_code: true,
        }
    }
}

/// What started an escalation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Trigger {
    /// The caller said one of the profile's phrases (the phrase that matched).
    CallerPhrase(String),
    /// The model called `transfer_to_human` (its `reason` argument).
    Tool(String),
    /// The caller pressed the profile's DTMF key.
    Dtmf(char),
    /// `POST /v1/calls/{call_id}/transfer` (the operator's note).
    Operator(String),
}

impl Trigger {
    /// Metric/record label: `caller_phrase`, `tool`, `dtmf`, `operator`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CallerPhrase(_) => "caller_phrase",
            Self::Tool(_) => "tool",
            Self::Dtmf(_) => "dtmf",
            Self::Operator(_) => "operator",
        }
    }

    /// The trigger's detail for the call record.
    pub fn detail(&self) -> String {
        match self {
            Self::CallerPhrase(s) | Self::Tool(s) | Self::Operator(s) => s.clone(),
            Self::Dtmf(c) => c.to_string(),
        }
    }
}

/// How a hand-off ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sideband closed within the window after a successful `/refer` to this target.
    Transferred(TransferTarget),
    /// No target took the call; the apology was spoken and the call hung up.
    Failed,
}

impl Outcome {
    /// `transferred` or `transfer_failed`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Transferred(_) => "transferred",
            Self::Failed => "transfer_failed",
        }
    }
}

/// What the monitor must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Make the agent say this line, then call [`Handoff::line_spoken`] (or after a timeout).
    Say(String),
    /// `POST /refer` to this target, then call [`Handoff::refer_answered`].
    Refer(TransferTarget),
    /// Wait for the sideband to close ([`Handoff::sideband_closed`]) or the outcome window to
    /// pass ([`Handoff::window_elapsed`]).
    AwaitOutcome(TransferTarget),
    /// `POST /hangup`; the hand-off is over with [`Outcome::Failed`].
    Hangup,
    /// The hand-off is over.
    Done(Outcome),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Phase {
    SpeakingHandoff,
    Referring(TransferTarget),
    Awaiting(TransferTarget),
    Apologising,
    Done,
}

/// The hand-off state machine for one escalation. Pure: no I/O, no clocks; serialisable with the
/// call's state machine ([`crate::calls::machine`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Handoff {
    trigger: Trigger,
    targets: VecDeque<TransferTarget>,
    apology: String,
    phase: Phase,
    tried: Vec<TransferTarget>,
}

impl Handoff {
    /// Starts a hand-off to `target` then `fallback`; the first step is saying `handoff_line`.
    pub fn start(
        trigger: Trigger,
        target: TransferTarget,
        fallback: Option<TransferTarget>,
        handoff_line: &str,
        apology: &str,
    ) -> (Self, Step) {
        let mut targets = VecDeque::from([target]);
        targets.extend(fallback);
        let this = Self {
            trigger,
            targets,
            apology: apology.to_string(),
            phase: Phase::SpeakingHandoff,
            tried: Vec::new(),
        };
        (this, Step::Say(handoff_line.to_string()))
    }

    /// The trigger that started this hand-off.
    pub fn trigger(&self) -> &Trigger {
        &self.trigger
    }

    /// Targets tried so far, in order.
    pub fn tried(&self) -> &[TransferTarget] {
        &self.tried
    }

    /// The target currently being referred to or awaited, if any.
    pub fn current_target(&self) -> Option<&TransferTarget> {
        match &self.phase {
            Phase::Referring(t) | Phase::Awaiting(t) => Some(t),
            _ => None,
        }
    }

    /// True while waiting for the sideband to close after a relayed REFER.
    pub fn is_awaiting_outcome(&self) -> bool {
        matches!(self.phase, Phase::Awaiting(_))
    }

    /// True once [`Step::Done`] or [`Step::Hangup`] was returned.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    fn next_target_or_apology(&mut self) -> Step {
        match self.targets.pop_front() {
            Some(t) => {
                self.tried.push(t.clone());
                self.phase = Phase::Referring(t.clone());
                Step::Refer(t)
            }
            None => {
                self.phase = Phase::Apologising;
                Step::Say(self.apology.clone())
            }
        }
    }

    /// The line the monitor was asked to say has been spoken (or its timeout passed).
    pub fn line_spoken(&mut self) -> Step {
        match self.phase {
            Phase::SpeakingHandoff => self.next_target_or_apology(),
            Phase::Apologising => {
                self.phase = Phase::Done;
                Step::Hangup
            }
            _ => self.wait_step(),
        }
    }

    fn wait_step(&self) -> Step {
        match &self.phase {
            Phase::Awaiting(t) | Phase::Referring(t) => Step::AwaitOutcome(t.clone()),
            Phase::Done => Step::Done(Outcome::Failed),
            Phase::SpeakingHandoff | Phase::Apologising => Step::Say(String::new()),
        }
    }

    /// `/refer` answered: `true` for 200 (now wait for the outcome), `false` for an error (try
    /// the next target).
    pub fn refer_answered(&mut self, relayed: bool) -> Step {
        let Phase::Referring(t) = self.phase.clone() else {
            return self.wait_step();
        };
        if relayed {
            self.phase = Phase::Awaiting(t.clone());
            Step::AwaitOutcome(t)
        } else {
            self.next_target_or_apology()
        }
    }

    /// The sideband closed. While awaiting an outcome this is the transfer succeeding.
    /// Returns `None` when the close is not a transfer outcome (the caller hung up mid hand-off).
    pub fn sideband_closed(&mut self) -> Option<Outcome> {
        match self.phase.clone() {
            Phase::Awaiting(t) => {
                self.phase = Phase::Done;
                Some(Outcome::Transferred(t))
            }
            _ => None,
        }
    }

    /// The outcome window passed without the sideband closing: the REFER did not take.
    pub fn window_elapsed(&mut self) -> Step {
        match self.phase {
            Phase::Awaiting(_) => self.next_target_or_apology(),
            _ => self.wait_step(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tel(n: &str) -> TransferTarget {
        TransferTarget::parse(n).unwrap()
    }

    #[test]
    fn transfer_on_first_target() {
        let (mut h, step) = Handoff::start(
            Trigger::Dtmf('0'),
            tel("tel:+14155550100"),
            None,
            "Hold on",
            "Sorry",
        );
        assert_eq!(step, Step::Say("Hold on".into()));
        assert_eq!(h.line_spoken(), Step::Refer(tel("tel:+14155550100")));
        assert_eq!(
            h.refer_answered(true),
            Step::AwaitOutcome(tel("tel:+14155550100"))
        );
        assert!(h.is_awaiting_outcome());
        assert_eq!(
            h.sideband_closed(),
            Some(Outcome::Transferred(tel("tel:+14155550100")))
        );
        assert!(h.is_done());
    }

    #[test]
    fn silent_failure_falls_back_then_apologises() {
        let primary = tel("tel:+14155550100");
        let fallback = TransferTarget::parse("sip:queue@pbx.example.com").unwrap();
        let (mut h, _) = Handoff::start(
            Trigger::Tool("x".into()),
            primary.clone(),
            Some(fallback.clone()),
            "Hold",
            "Sorry",
        );
        assert_eq!(h.line_spoken(), Step::Refer(primary.clone()));
        h.refer_answered(true);
        assert_eq!(
            h.window_elapsed(),
            Step::Refer(fallback.clone()),
            "silent failure tries the fallback"
        );
        assert_eq!(
            h.refer_answered(false),
            Step::Say("Sorry".into()),
            "error on fallback → apology"
        );
        assert_eq!(
            h.sideband_closed(),
            None,
            "a close while apologising is not a transfer"
        );
        assert_eq!(h.line_spoken(), Step::Hangup);
        assert_eq!(h.tried(), &[primary, fallback]);
    }
}
