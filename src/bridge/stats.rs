//! Per-call frame statistics of the bridge, with the Prometheus counters fed as they change.
//!
//! Bridge time per message is measured from the moment a WebSocket message has been read
//! (`Instant::now()` right after the read) to the moment the resulting message(s) have been
//! written and flushed to the other socket: for inbound audio the `input_audio_buffer.append`,
//! for outbound audio the last Twilio `media` frame made from the delta. Times are kept in a
//! histogram with 1 µs buckets up to 2 ms, then 100 µs buckets up to 100 ms, so p50/p99 are
//! exact to 1 µs where it matters. Besides each call's histograms, every time also goes into
//! process-wide ones ([`process_histogram`]), which the benchmark reads.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Histogram};

use super::metric_names as names;
use crate::calls::record::BridgeStats;

const FINE_BUCKETS: usize = 2_000; // 0..2000 µs, 1 µs wide
const COARSE_WIDTH_US: u64 = 100;
const COARSE_BUCKETS: usize = 980; // 2 ms..100 ms, 100 µs wide
const BUCKETS: usize = FINE_BUCKETS + COARSE_BUCKETS + 1; // + overflow

/// A latency histogram in microseconds (see the module docs for the bucket layout); lock-free
/// (one relaxed atomic add per record).
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = if us < FINE_BUCKETS as u64 {
            us as usize
        } else {
            let coarse = (us - FINE_BUCKETS as u64) / COARSE_WIDTH_US;
            FINE_BUCKETS + (coarse as usize).min(COARSE_BUCKETS)
        };
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Number of recorded durations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Forgets every recorded duration.
    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
    }

    /// The `q` quantile (0.0..=1.0) in microseconds: the lower edge of the bucket holding the
    /// `ceil(q·n)`-th smallest value (exact below 2 ms); 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let n: u64 = counts.iter().sum();
        if n == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return if i < FINE_BUCKETS {
                    i as u64
                } else {
                    FINE_BUCKETS as u64 + (i - FINE_BUCKETS) as u64 * COARSE_WIDTH_US
                };
            }
        }
        unreachable!("rank <= n")
    }
}

/// The process-wide histogram of `dir`: every bridge time of every call since start (or since
/// the last [`LatencyHistogram::reset`]).
pub fn process_histogram(dir: Direction) -> &'static LatencyHistogram {
    static GLOBAL: OnceLock<[LatencyHistogram; 2]> = OnceLock::new();
    let g = GLOBAL.get_or_init(Default::default);
    match dir {
        Direction::Inbound => &g[0],
        Direction::Outbound => &g[1],
    }
}

/// Which way a measured message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Twilio `media` → `input_audio_buffer.append`.
    Inbound,
    /// Model audio delta → Twilio frames.
    Outbound,
}

/// The counters of one call (atomics: updated from the bridge's tasks without locking), mirrored
/// into the process-wide Prometheus metrics of [`super::metric_names`].
#[derive(Debug)]
pub struct FrameStats {
    /// Twilio `media` received.
    pub frames_in: AtomicU64,
    /// μ-law bytes received.
    pub bytes_in: AtomicU64,
    /// `input_audio_buffer.append` sent.
    pub appends: AtomicU64,
    /// Model audio deltas received.
    pub deltas: AtomicU64,
    /// Twilio `media` frames sent.
    pub frames_out: AtomicU64,
    /// μ-law bytes sent.
    pub bytes_out: AtomicU64,
    /// Marks sent.
    pub marks_sent: AtomicU64,
    /// Marks echoed.
    pub marks_echoed: AtomicU64,
    /// Twilio `clear` sent.
    pub barge_ins: AtomicU64,
    /// `conversation.item.truncate` sent.
    pub truncates: AtomicU64,
    /// DTMF keys.
    pub dtmf: AtomicU64,
    /// Unparseable or unexpected messages.
    pub malformed: AtomicU64,
    /// Bad base64 or oversize audio.
    pub bad_audio: AtomicU64,
    /// PCM16 streams ending mid-sample.
    pub odd_pcm: AtomicU64,
    /// Deltas dropped after a barge-in.
    pub dropped_deltas: AtomicU64,
    /// Inbound bridge times.
    pub inbound: LatencyHistogram,
    /// Outbound bridge times.
    pub outbound: LatencyHistogram,
    prom: Prom,
}

#[derive(Debug)]
struct Prom {
    frames_in: Counter,
    frames_out: Counter,
    malformed: Counter,
    bad_audio: Counter,
    odd_pcm: Counter,
    dropped: Counter,
    barge_ins: Counter,
    inbound: Histogram,
    outbound: Histogram,
}

impl Default for FrameStats {
    fn default() -> Self {
        Self::new()
    }
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

impl FrameStats {
    /// Zeroed counters; looks up the Prometheus handles once.
    pub fn new() -> Self {
        Self {
            frames_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            deltas: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            marks_sent: AtomicU64::new(0),
            marks_echoed: AtomicU64::new(0),
            barge_ins: AtomicU64::new(0),
            truncates: AtomicU64::new(0),
            dtmf: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            bad_audio: AtomicU64::new(0),
            odd_pcm: AtomicU64::new(0),
            dropped_deltas: AtomicU64::new(0),
            inbound: LatencyHistogram::default(),
            outbound: LatencyHistogram::default(),
            prom: Prom {
                frames_in: metrics::counter!(names::FRAMES, "direction" => "in"),
                frames_out: metrics::counter!(names::FRAMES, "direction" => "out"),
                malformed: metrics::counter!(names::ERRORS, "kind" => "malformed"),
                bad_audio: metrics::counter!(names::ERRORS, "kind" => "bad_audio"),
                odd_pcm: metrics::counter!(names::ERRORS, "kind" => "odd_pcm"),
                dropped: metrics::counter!(names::ERRORS, "kind" => "dropped_delta"),
                barge_ins: metrics::counter!(names::BARGE_INS),
                inbound: metrics::histogram!(names::FRAME_SECONDS, "direction" => "inbound"),
                outbound: metrics::histogram!(names::FRAME_SECONDS, "direction" => "outbound"),
            },
        }
    }

    /// One Twilio `media` with `bytes` μ-law bytes received.
    pub fn frame_in(&self, bytes: usize) {
        add(&self.frames_in, 1);
        add(&self.bytes_in, bytes as u64);
        self.prom.frames_in.increment(1);
    }

    /// `n` Twilio frames of 160 bytes sent.
    pub fn frames_out(&self, n: usize) {
        add(&self.frames_out, n as u64);
        add(&self.bytes_out, 160 * n as u64);
        self.prom.frames_out.increment(n as u64);
    }

    /// A message that could not be used.
    pub fn malformed(&self) {
        add(&self.malformed, 1);
        self.prom.malformed.increment(1);
    }

    /// An audio payload that was not valid base64 or too large.
    pub fn bad_audio(&self) {
        add(&self.bad_audio, 1);
        self.prom.bad_audio.increment(1);
    }

    /// A PCM16 stream ended mid-sample.
    pub fn odd_pcm(&self) {
        add(&self.odd_pcm, 1);
        self.prom.odd_pcm.increment(1);
    }

    /// A delta dropped after a barge-in.
    pub fn dropped_delta(&self) {
        add(&self.dropped_deltas, 1);
        self.prom.dropped.increment(1);
    }

    /// A barge-in (`clear`) with `truncates` truncate events.
    pub fn barge_in(&self, truncates: usize) {
        add(&self.barge_ins, 1);
        add(&self.truncates, truncates as u64);
        self.prom.barge_ins.increment(1);
    }

    /// Increments a plain counter (`appends`, `deltas`, `marks_sent`, `marks_echoed`, `dtmf`).
    pub fn bump(counter: &AtomicU64) {
        add(counter, 1);
    }

    /// Records a bridge time.
    pub fn latency(&self, dir: Direction, d: Duration) {
        match dir {
            Direction::Inbound => {
                self.inbound.record(d);
                self.prom.inbound.record(d.as_secs_f64());
            }
            Direction::Outbound => {
                self.outbound.record(d);
                self.prom.outbound.record(d.as_secs_f64());
            }
        }
        process_histogram(dir).record(d);
    }

    /// The totals for the call record.
    pub fn summary(&self) -> BridgeStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BridgeStats {
            frames_in: g(&self.frames_in),
            bytes_in: g(&self.bytes_in),
            appends: g(&self.appends),
            deltas: g(&self.deltas),
            frames_out: g(&self.frames_out),
            bytes_out: g(&self.bytes_out),
            marks_sent: g(&self.marks_sent),
            marks_echoed: g(&self.marks_echoed),
            barge_ins: g(&self.barge_ins),
            truncates: g(&self.truncates),
            dtmf: g(&self.dtmf),
            malformed: g(&self.malformed),
            bad_audio: g(&self.bad_audio),
            odd_pcm: g(&self.odd_pcm),
            dropped_deltas: g(&self.dropped_deltas),
            inbound_p50_us: self.inbound.quantile_us(0.5),
            inbound_p99_us: self.inbound.quantile_us(0.99),
            outbound_p50_us: self.outbound.quantile_us(0.5),
            outbound_p99_us: self.outbound.quantile_us(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_exact_below_two_ms() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile_us(0.5), 0);
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_us(0.5), 50);
        assert_eq!(h.quantile_us(0.99), 99);
        assert_eq!(h.quantile_us(1.0), 100);
        h.record(Duration::from_millis(7));
        h.record(Duration::from_secs(5));
        assert_eq!(h.quantile_us(1.0), 2_000 + 980 * 100, "overflow bucket");
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(7_250));
        assert_eq!(h.quantile_us(0.5), 7_200);
    }
}
