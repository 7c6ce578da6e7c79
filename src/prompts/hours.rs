//! Opening hours for `[reject.hours]`.

use chrono::{DateTime, Datelike, Timelike, Utc, Weekday};
use chrono_tz::Tz;

/// One opening window, written `DAY[-DAY] HH:MM-HH:MM`, e.g. `mon-fri 09:00-17:00` or
/// `sat 10:00-14:00`.
///
/// - Days are `mon tue wed thu fri sat sun` (any case). A range is inclusive and may wrap
///   (`fri-mon` is Friday to Monday).
/// - Times are local wall-clock times in the profile's time zone, minutes since midnight, start
///   inclusive and end **exclusive**; `24:00` is allowed as the end. The end must be after the
///   start: split overnight windows at midnight (`fri 22:00-24:00`, `sat 00:00-02:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenWindow {
    /// Open days, indexed by [`Weekday::num_days_from_monday`].
    pub days: [bool; 7],
    /// Opening time, minutes after local midnight (0..1440).
    pub start_minute: u16,
    /// Closing time, minutes after local midnight (exclusive, 1..=1440).
    pub end_minute: u16,
}

impl OpenWindow {
    /// Parses `DAY[-DAY] HH:MM-HH:MM`.
    ///
    /// # Errors
    /// A message naming the offending string and the expected syntax.
    pub fn parse(s: &str) -> Result<OpenWindow, String> {
        let bad = |why: &str| {
            format!(
                "bad opening hours {s:?}: {why} (expected DAY[-DAY] HH:MM-HH:MM, e.g. \"mon-fri 09:00-17:00\")"
            )
        };
        let mut parts = s.split_whitespace();
        let (Some(days), Some(times), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected a day part and a time part"));
        };
        let (first, last) = match days.split_once('-') {
            Some((a, b)) => (day(a), day(b)),
            None => (day(days), day(days)),
        };
        let (Some(first), Some(last)) = (first, last) else {
            return Err(bad("days are mon, tue, wed, thu, fri, sat, sun"));
        };
        let mut open = [false; 7];
        let mut d = first;
        loop {
            open[d.num_days_from_monday() as usize] = true;
            if d == last {
                break;
            }
            d = d.succ();
        }
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| bad("missing '-' between times"))?;
        let start = minute(start, false).ok_or_else(|| bad("bad start time"))?;
        let end = minute(end, true).ok_or_else(|| bad("bad end time"))?;
        if end <= start {
            return Err(bad(
                "the end must be after the start; split overnight windows at midnight",
            ));
        }
        Ok(OpenWindow {
            days: open,
            start_minute: start,
            end_minute: end,
        })
    }

    /// True when local `weekday` at `minute` after midnight is inside the window.
    pub fn contains(&self, weekday: Weekday, minute: u16) -> bool {
        self.days[weekday.num_days_from_monday() as usize]
            && minute >= self.start_minute
            && minute < self.end_minute
    }
}

fn day(s: &str) -> Option<Weekday> {
    Some(match s.to_ascii_lowercase().as_str() {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return None,
    })
}

/// `H:MM` or `HH:MM` → minutes; `24:00` only when `allow_24`.
fn minute(s: &str, allow_24: bool) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if !(1..=2).contains(&h.len()) || m.len() != 2 {
        return None;
    }
    if !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) if allow_24 => Some(1440),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

/// `[reject.hours]`: calls outside every window are rejected with `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenHours {
    /// IANA time zone the windows are written in (chrono-tz), e.g. `America/New_York`.
    pub timezone: Tz,
    /// The opening windows; open when any contains the local time.
    pub windows: Vec<OpenWindow>,
    /// SIP status for `/reject` when closed (400..=699; default 480 Temporarily Unavailable).
    pub status: u16,
}

impl OpenHours {
    /// True when `now`, converted to the profile's time zone (DST included), falls in a window.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&self.timezone);
        let minute = (local.hour() * 60 + local.minute()) as u16;
        self.windows
            .iter()
            .any(|w| w.contains(local.weekday(), minute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_single_days_and_wrapping() {
        let w = OpenWindow::parse("mon-fri 09:00-17:00").unwrap();
        assert_eq!(w.days, [true, true, true, true, true, false, false]);
        assert_eq!((w.start_minute, w.end_minute), (540, 1020));
        let w = OpenWindow::parse("  SAT   10:00-14:30 ").unwrap();
        assert_eq!(w.days, [false, false, false, false, false, true, false]);
        assert_eq!((w.start_minute, w.end_minute), (600, 870));
        let w = OpenWindow::parse("fri-mon 0:00-24:00").unwrap();
        assert_eq!(w.days, [true, false, false, false, true, true, true]);
        assert_eq!((w.start_minute, w.end_minute), (0, 1440));
    }

    #[test]
    fn end_is_exclusive() {
        let w = OpenWindow::parse("tue 09:00-17:00").unwrap();
        assert!(!w.contains(Weekday::Tue, 539));
        assert!(w.contains(Weekday::Tue, 540));
        assert!(w.contains(Weekday::Tue, 1019));
        assert!(!w.contains(Weekday::Tue, 1020));
        assert!(!w.contains(Weekday::Wed, 600));
    }

    #[test]
    fn rejects_bad_syntax_naming_the_string() {
        for bad in [
            "",
            "mon-fri",
            "mon-fri 9-17",
            "mon-fri 09:00",
            "monday 09:00-17:00",
            "mon-fri 09:00-17:00 extra",
            "mon-fri 17:00-09:00",
            "mon 09:00-09:00",
            "mon 24:00-24:00",
            "mon 09:60-10:00",
            "mon 25:00-26:00",
            "mon 9:5-10:00",
            "mon-xyz 09:00-10:00",
            "mon 09:00-24:01",
        ] {
            let err = OpenWindow::parse(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
    }
}
