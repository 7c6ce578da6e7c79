//! Inbound audio pacing: a Media Stream may not send caller audio faster than real time.
//!
//! Twilio sends the caller's audio as it happens: one `media` message per 20 ms of μ-law at
//! 8 kHz (160 bytes, 1 byte = 125 µs; <https://www.twilio.com/docs/voice/media-streams/websocket-messages#media-message>).
//! Network jitter bunches frames up now and then, but over any stretch of a few seconds a real
//! stream carries as much audio as wall-clock time passed. A client that sends more (a replayed
//! or scripted stream pumping audio into a paid Realtime session) is abusive.
//!
//! [`Pacer`] keeps two token buckets, both measured in microseconds of audio and refilled by
//! wall-clock time:
//!
//! | bucket | refill | capacity (default) | a frame that does not fit |
//! |---|---|---|---|
//! | forward | 1× real time | [`PacerLimits::forward_burst`] (2 s) | is not forwarded to the model ([`Verdict::Drop`]) |
//! | abuse | [`PacerLimits::abuse_rate_permille`] (1.5× real time) | [`PacerLimits::abuse_burst`] (4 s) | ends the stream ([`Verdict::Abusive`], latched) |
//!
//! Both start full. So the model never receives more than `elapsed + forward_burst` of audio,
//! whatever the client sends; a burst of up to 2 s after a stall (audio the stream owed) passes
//! untouched; and a stream is abusive once it has sent `1.5 × elapsed + 4 s` of audio: sustained
//! 3× real time trips after ~2.7 s, 2× after 8 s, 1.6× after 40 s, 1.5× never.
//!
//! The pacer is pure: the clock is a parameter.

use std::time::{Duration, Instant};

/// The limits of a [`Pacer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacerLimits {
    /// Most audio forwarded ahead of real time (the forward bucket's capacity).
    pub forward_burst: Duration,
    /// Sustained rate, in thousandths of real time, above which a stream is abusive (1500 =
    /// 1.5×).
    pub abuse_rate_permille: u32,
    /// Audio a stream may send beyond `abuse_rate × elapsed` before it is abusive.
    pub abuse_burst: Duration,
}

impl Default for PacerLimits {
    fn default() -> Self {
        Self {
            forward_burst: Duration::from_secs(2),
            abuse_rate_permille: 1500,
            abuse_burst: Duration::from_secs(4),
        }
    }
}

/// What to do with one inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within real time: forward it to the model.
    Forward,
    /// Ahead of real time: do not forward it (the stream goes on).
    Drop,
    /// The stream has sent audio faster than allowed for too long: end it. Every later frame
    /// gets this verdict too.
    Abusive,
}

/// The pacing state of one stream (see the module docs).
#[derive(Debug, Clone)]
pub struct Pacer {
    limits: PacerLimits,
    last: Instant,
    /// Forward bucket, µs of audio.
    forward_us: u64,
    /// Abuse bucket, µs of audio × 1000 (so the 1.5× refill stays exact).
    abuse_nus: u64,
    abusive: bool,
    forwarded_us: u64,
    dropped_us: u64,
}

/// μ-law at 8 kHz: µs of audio per byte.
const US_PER_ULAW_BYTE: u64 = 125;

/// Audio duration of `bytes` of μ-law at 8 kHz.
pub fn ulaw_duration(bytes: usize) -> Duration {
    Duration::from_micros(
        u64::try_from(bytes)
            .unwrap_or(u64::MAX)
            .saturating_mul(US_PER_ULAW_BYTE),
    )
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Pacer {
    /// A pacer whose buckets are full at `now` (the stream's start).
    pub fn new(limits: PacerLimits, now: Instant) -> Self {
        Self {
            limits,
            last: now,
            forward_us: micros(limits.forward_burst),
            abuse_nus: micros(limits.abuse_burst).saturating_mul(1000),
            abusive: false,
            forwarded_us: 0,
            dropped_us: 0,
        }
    }

    /// A pacer for a stream whose `start` arrived at `started` but whose frames are read from
    /// `now` on (the Realtime session was being opened meanwhile): full buckets plus the credit
    /// of the time in between, at each bucket's rate, above the capacities. The frames Twilio
    /// queued meanwhile then pass, and the model still never gets more audio than
    /// `now - started + forward_burst` plus real time since.
    pub fn with_backlog(limits: PacerLimits, started: Instant, now: Instant) -> Self {
        let mut p = Self::new(limits, now);
        let waited = micros(now.saturating_duration_since(started));
        p.forward_us = p.forward_us.saturating_add(waited);
        p.abuse_nus = p
            .abuse_nus
            .saturating_add(waited.saturating_mul(u64::from(limits.abuse_rate_permille)));
        p
    }

    /// The verdict on a frame carrying `audio`, received at `now` (a `now` earlier than the
    /// previous one counts as no time passed).
    pub fn on_frame(&mut self, audio: Duration, now: Instant) -> Verdict {
        if self.abusive {
            return Verdict::Abusive;
        }
        let elapsed = micros(now.saturating_duration_since(self.last));
        self.last = self.last.max(now);
        let audio = micros(audio);
        // Refills stop at the capacity; a backlog credit above it is kept until spent.
        let refill = |level: u64, add: u64, cap: u64| level.max(level.saturating_add(add).min(cap));
        self.forward_us = refill(self.forward_us, elapsed, micros(self.limits.forward_burst));
        self.abuse_nus = refill(
            self.abuse_nus,
            elapsed.saturating_mul(u64::from(self.limits.abuse_rate_permille)),
            micros(self.limits.abuse_burst).saturating_mul(1000),
        );
        let cost = audio.saturating_mul(1000);
        if cost > self.abuse_nus {
            self.abusive = true;
            self.dropped_us = self.dropped_us.saturating_add(audio);
            return Verdict::Abusive;
        }
        self.abuse_nus -= cost;
        if audio > self.forward_us {
            self.dropped_us = self.dropped_us.saturating_add(audio);
            return Verdict::Drop;
        }
        self.forward_us -= audio;
        self.forwarded_us = self.forwarded_us.saturating_add(audio);
        Verdict::Forward
    }

    /// Audio forwarded so far.
    pub fn forwarded(&self) -> Duration {
        Duration::from_micros(self.forwarded_us)
    }

    /// Audio dropped so far (ahead of real time, or after the stream turned abusive).
    pub fn dropped(&self) -> Duration {
        Duration::from_micros(self.dropped_us)
    }

    /// Whether the stream has been found abusive.
    pub fn is_abusive(&self) -> bool {
        self.abusive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);

    /// Sends `frames` 20 ms frames at `rate` × real time starting at `t0 + offset`; returns the
    /// verdicts and the time after the last frame.
    fn run(p: &mut Pacer, t0: Instant, offset: Duration, frames: u32, rate: f64) -> Vec<Verdict> {
        (0..frames)
            .map(|i| {
                let at = t0 + offset + FRAME.mul_f64(f64::from(i) / rate);
                p.on_frame(FRAME, at)
            })
            .collect()
    }

    #[test]
    fn durations_from_payloads() {
        assert_eq!(ulaw_duration(160), FRAME);
        assert_eq!(ulaw_duration(8000), Duration::from_secs(1));
        assert_eq!(ulaw_duration(1), Duration::from_micros(125));
    }

    #[test]
    fn real_time_forwards_everything_for_an_hour() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerLimits::default(), t0);
        let v = run(&mut p, t0, Duration::ZERO, 180_000, 1.0);
        assert!(v.iter().all(|v| *v == Verdict::Forward));
        assert_eq!(p.forwarded(), Duration::from_secs(3600));
        assert_eq!(p.dropped(), Duration::ZERO);
    }

    #[test]
    fn jitter_and_a_burst_after_a_stall_pass() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerLimits::default(), t0);
        // 10 s in real time, every frame ±8 ms late/early.
        for i in 0..500u32 {
            let jitter = if i % 2 == 0 { 8 } else { 0 };
            let at = t0 + FRAME * i + Duration::from_millis(jitter);
            assert_eq!(p.on_frame(FRAME, at), Verdict::Forward, "frame {i}");
        }
        // A 1.5 s stall, then the 75 frames it held back arrive at once, then real time again.
        let stall_end = t0 + Duration::from_millis(10_000 + 1_500);
        for i in 0..75 {
            assert_eq!(
                p.on_frame(FRAME, stall_end),
                Verdict::Forward,
                "held-back frame {i}"
            );
        }
        let v = run(&mut p, t0, Duration::from_millis(11_520), 500, 1.0);
        assert!(v.iter().all(|v| *v == Verdict::Forward));
        assert!(!p.is_abusive());
    }

    #[test]
    fn three_times_real_time_is_abusive_and_forwarding_stays_within_real_time() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerLimits::default(), t0);
        let mut tripped_at = None;
        for i in 0..3000u32 {
            let at = t0 + FRAME.mul_f64(f64::from(i) / 3.0);
            if p.on_frame(FRAME, at) == Verdict::Abusive {
                tripped_at = Some(at - t0);
                break;
            }
            // Never ahead of real time by more than the forward burst.
            assert!(p.forwarded() <= (at - t0) + PacerLimits::default().forward_burst);
        }
        let tripped = tripped_at.expect("3x real time is abusive");
        // 3x sent vs 1.5x allowed + 4 s: 1.5 t = 4 s, t ≈ 2.67 s.
        assert!(
            tripped > Duration::from_millis(2_500) && tripped < Duration::from_millis(2_800),
            "{tripped:?}"
        );
        assert!(p.dropped() > Duration::ZERO);
        // Latched.
        assert_eq!(
            p.on_frame(FRAME, t0 + Duration::from_secs(60)),
            Verdict::Abusive
        );
    }

    #[test]
    fn just_below_and_above_the_abuse_rate() {
        let t0 = Instant::now();
        // 1.45x for 10 minutes: never abusive; forwarded stays within real time + burst.
        let mut p = Pacer::new(PacerLimits::default(), t0);
        let v = run(&mut p, t0, Duration::ZERO, 43_500, 1.45);
        assert!(!v.contains(&Verdict::Abusive));
        let elapsed = FRAME.mul_f64(43_499.0 / 1.45);
        assert!(p.forwarded() <= elapsed + Duration::from_secs(2));
        assert!(v.contains(&Verdict::Drop));
        // 1.6x: abusive after (4 s) / (0.1) = 40 s of wall time.
        let mut p = Pacer::new(PacerLimits::default(), t0);
        let v = run(&mut p, t0, Duration::ZERO, 4_000, 1.6);
        let first = v
            .iter()
            .position(|v| *v == Verdict::Abusive)
            .expect("abusive");
        let at = FRAME.mul_f64(first as f64 / 1.6);
        assert!(
            at > Duration::from_secs(39) && at < Duration::from_secs(41),
            "{at:?}"
        );
    }

    #[test]
    fn a_backlog_queued_while_the_session_opened_passes_once() {
        let t0 = Instant::now();
        let ready = t0 + Duration::from_secs(6);
        let mut p = Pacer::with_backlog(PacerLimits::default(), t0, ready);
        // The 6 s Twilio queued meanwhile arrive at once: forwarded (6 s + the 2 s burst).
        for i in 0..300 {
            assert_eq!(p.on_frame(FRAME, ready), Verdict::Forward, "frame {i}");
        }
        // Then real time: everything passes, and the credit above the caps is gone for good.
        let v = run(&mut p, ready, Duration::ZERO, 500, 1.0);
        assert!(v.iter().all(|v| *v == Verdict::Forward));
        assert!(p.forwarded() <= Duration::from_secs(6 + 10) + Duration::from_secs(2));
        let later = ready + Duration::from_secs(10);
        for _ in 0..100 {
            p.on_frame(FRAME, later);
        }
        assert_eq!(p.on_frame(FRAME, later), Verdict::Drop);
    }

    #[test]
    fn a_huge_frame_at_once_is_abusive_and_time_going_back_adds_nothing() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerLimits::default(), t0);
        assert_eq!(p.on_frame(Duration::from_secs(5), t0), Verdict::Abusive);
        let mut p = Pacer::new(PacerLimits::default(), t0 + Duration::from_secs(10));
        // An earlier `now` counts as no time passed: the buckets stay as they were.
        for _ in 0..100 {
            assert_eq!(p.on_frame(FRAME, t0), Verdict::Forward);
        }
        assert_eq!(p.on_frame(FRAME, t0), Verdict::Drop);
    }
}
