//! Time bounds of a rule (`when:`): days and hours read in a time zone, and an inclusive
//! window of RFC 3339 instants. The tz database is bundled into the binary (distroless
//! images have no /usr/share/zoneinfo).

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::model::WhenDef;

/// A compiled `when:`.
#[derive(Debug, Clone)]
pub struct TimeWindow {
    /// Bit i set = weekday i allowed (Monday = 0); `None` = any day.
    days: Option<u8>,
    /// Minutes since local midnight: start inclusive, end exclusive (end may be 1440).
    hours: Option<(u16, u16)>,
    tz: TimeZone,
    not_before: Option<Timestamp>,
    not_after: Option<Timestamp>,
}

fn parse_hhmm(s: &str, allow_24: bool) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    if h == 24 && m == 0 && allow_24 {
        return Some(1440);
    }
    if h > 23 || m > 59 {
        return None;
    }
    Some(h * 60 + m)
}

fn parse_instant(s: &str, key: &str) -> Result<Timestamp, String> {
    // RFC 3339: date, `T`, time, and a `Z` or numeric offset.
    let ok_shape = s.len() >= 20 && s.get(10..11).is_some_and(|t| t == "T" || t == "t");
    match s.parse::<Timestamp>() {
        Ok(t) if ok_shape => Ok(t),
        _ => Err(format!("`when.{key}`: `{s}` is not an RFC 3339 instant (write e.g. 2026-11-23T09:00:00Z)")),
    }
}

fn weekday_bit(d: Weekday) -> u8 {
    1u8 << (d.to_monday_zero_offset() as u8)
}

impl TimeWindow {
    /// Validate and compile a `when:`.
    pub fn compile(def: &WhenDef) -> Result<TimeWindow, String> {
        let tz = match &def.timezone {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name)
                .map_err(|_| format!("`when.timezone`: `{name}` is not an IANA time zone name (e.g. Europe/Berlin)"))?,
        };
        let days = match &def.days {
            None => None,
            Some(list) => {
                if list.is_empty() {
                    return Err("`when.days` is empty; omit it to mean every day".into());
                }
                let mut bits = 0u8;
                for d in list {
                    let day = match d.as_str() {
                        "mon" => Weekday::Monday,
                        "tue" => Weekday::Tuesday,
                        "wed" => Weekday::Wednesday,
                        "thu" => Weekday::Thursday,
                        "fri" => Weekday::Friday,
                        "sat" => Weekday::Saturday,
                        "sun" => Weekday::Sunday,
                        other => {
                            return Err(format!(
                                "`when.days`: `{other}` is not a day; use mon, tue, wed, thu, fri, sat, sun"
                            ))
                        }
                    };
                    bits |= weekday_bit(day);
                }
                Some(bits)
            }
        };
        let hours = match &def.hours {
            None => None,
            Some(h) => {
                let bad =
                    || format!("`when.hours`: `{h}` is not `HH:MM-HH:MM` (e.g. 09:00-18:00; 24:00 only as an end)");
                let (a, b) = h.split_once('-').ok_or_else(bad)?;
                let start = parse_hhmm(a.trim(), false).ok_or_else(bad)?;
                let end = parse_hhmm(b.trim(), true).ok_or_else(bad)?;
                if start == end {
                    return Err(format!("`when.hours`: `{h}` has the same start and end"));
                }
                Some((start, end))
            }
        };
        let not_before = def.not_before.as_deref().map(|s| parse_instant(s, "not_before")).transpose()?;
        let not_after = def.not_after.as_deref().map(|s| parse_instant(s, "not_after")).transpose()?;
        if let (Some(a), Some(b)) = (not_before, not_after) {
            if a > b {
                return Err("`when.not_before` is after `when.not_after`; the rule could never match".into());
            }
        }
        Ok(TimeWindow { days, hours, tz, not_before, not_after })
    }

    /// The earliest instant after `now` at which [`Self::contains`] may change, if any: the
    /// next local start or end of `hours`, the next local midnight when `days` is set, the
    /// next UTC-offset transition of the zone (DST), `not_before` if still ahead, and just
    /// after `not_after`. Used to bound how long a cached decision may live.
    pub fn next_change(&self, now: Timestamp) -> Option<Timestamp> {
        let mut next: Option<Timestamp> = None;
        let mut consider = |t: Timestamp| {
            if t > now && next.is_none_or(|n| t < n) {
                next = Some(t);
            }
        };
        if let Some(t) = self.not_before {
            consider(t);
        }
        if let Some(t) = self.not_after {
            if let Ok(after) = t.checked_add(jiff::SignedDuration::from_nanos(1)) {
                consider(after);
            }
        }
        if self.days.is_some() || self.hours.is_some() {
            let today = self.tz.to_datetime(now).date();
            let Ok(tomorrow) = today.tomorrow() else {
                return Some(now);
            };
            let mut local: Vec<jiff::civil::DateTime> = Vec::with_capacity(5);
            if self.days.is_some() {
                local.push(tomorrow.at(0, 0, 0, 0));
            }
            if let Some((start, end)) = self.hours {
                for day in [today, tomorrow] {
                    for m in [start, end] {
                        let (h, min) = ((m / 60) as i8, (m % 60) as i8);
                        if h == 24 {
                            if let Ok(d) = day.tomorrow() {
                                local.push(d.at(0, 0, 0, 0));
                            }
                        } else {
                            local.push(day.at(h, min, 0, 0));
                        }
                    }
                }
            }
            let mut converted = true;
            for dt in local {
                // `compatible`: the earlier instant in a fold, the later in a gap; a flip
                // inside a gap happens at the transition itself, considered below.
                match self.tz.to_ambiguous_timestamp(dt).compatible() {
                    Ok(t) => consider(t),
                    Err(_) => converted = false,
                }
            }
            if let Some(tr) = self.tz.following(now).next() {
                consider(tr.timestamp());
            }
            if !converted {
                // Could not place a boundary: fall back to the next whole minute.
                if let Ok(t) = now.checked_add(jiff::SignedDuration::from_secs(60)) {
                    consider(t);
                }
            }
        }
        next
    }

    /// Whether `now` is inside the bounds.
    pub fn contains(&self, now: Timestamp) -> bool {
        if self.not_before.is_some_and(|t| now < t) || self.not_after.is_some_and(|t| now > t) {
            return false;
        }
        if self.days.is_none() && self.hours.is_none() {
            return true;
        }
        let local = self.tz.to_datetime(now);
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        // The local date the current stretch of hours started on: a window that wraps
        // midnight belongs to the day it starts (`fri 22:00-06:00` holds until Sat 06:00).
        let mut day = local.weekday();
        if let Some((start, end)) = self.hours {
            let inside = if start < end {
                minute >= start && minute < end
            } else if minute >= start {
                true
            } else if minute < end {
                day = day.previous();
                true
            } else {
                false
            };
            if !inside {
                return false;
            }
        }
        if let Some(days) = self.days {
            if days & weekday_bit(day) == 0 {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: Option<&[&str]>, hours: Option<&str>, tz: Option<&str>) -> TimeWindow {
        let def = WhenDef {
            days: days.map(|d| d.iter().map(|s| s.to_string()).collect()),
            hours: hours.map(String::from),
            timezone: tz.map(String::from),
            not_before: None,
            not_after: None,
        };
        TimeWindow::compile(&def).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn hours_in_a_time_zone() {
        let w = window(None, Some("09:00-18:00"), Some("Europe/Berlin"));
        // 2026-11-23 is a Monday; Berlin is UTC+1 in November.
        assert!(w.contains(ts("2026-11-23T08:00:00Z")));
        assert!(!w.contains(ts("2026-11-23T07:59:00Z")));
        assert!(!w.contains(ts("2026-11-23T17:00:00Z")));
        assert!(w.contains(ts("2026-11-23T16:59:59Z")));
    }

    #[test]
    fn wrapping_hours_and_days() {
        // 2026-11-23 is a Monday. A window that wraps belongs to the day it starts on.
        let w = window(Some(&["mon"]), Some("22:00-06:00"), None);
        assert!(w.contains(ts("2026-11-23T23:00:00Z")));
        assert!(w.contains(ts("2026-11-24T01:00:00Z")), "Tuesday 01:00 belongs to Monday's night");
        assert!(w.contains(ts("2026-11-24T05:59:00Z")));
        assert!(!w.contains(ts("2026-11-24T06:00:00Z")));
        assert!(!w.contains(ts("2026-11-23T05:59:00Z")), "Monday 05:59 belongs to Sunday's night");
        assert!(!w.contains(ts("2026-11-24T22:00:00Z")), "Tuesday's night");
        let fri = window(Some(&["fri"]), Some("22:00-06:00"), Some("Europe/Berlin"));
        // Friday 2026-11-27 22:00 Berlin = 21:00Z; Saturday 06:00 Berlin = 05:00Z.
        assert!(!fri.contains(ts("2026-11-27T20:59:00Z")));
        assert!(fri.contains(ts("2026-11-27T21:00:00Z")));
        assert!(fri.contains(ts("2026-11-28T04:59:00Z")));
        assert!(!fri.contains(ts("2026-11-28T05:00:00Z")));
        assert!(!fri.contains(ts("2026-11-27T04:00:00Z")), "Friday early morning is Thursday's night");
        let end24 = window(None, Some("18:00-24:00"), None);
        assert!(end24.contains(ts("2026-11-23T23:59:59Z")));
    }

    #[test]
    fn next_change_is_the_next_boundary() {
        // Kolkata is UTC+05:30: 09:00 local is 03:30Z, 18:00 local is 12:30Z.
        let w = window(None, Some("09:00-18:00"), Some("Asia/Kolkata"));
        assert_eq!(w.next_change(ts("2026-11-23T10:15:42.5Z")), Some(ts("2026-11-23T12:30:00Z")));
        assert_eq!(w.next_change(ts("2026-11-23T12:30:00Z")), Some(ts("2026-11-24T03:30:00Z")));
        let w = window(Some(&["mon"]), None, Some("Europe/Berlin"));
        assert_eq!(w.next_change(ts("2026-11-23T10:00:00Z")), Some(ts("2026-11-23T23:00:00Z")));
        // Berlin leaves summer time on 2026-10-25 at 01:00Z: a boundary.
        let w = window(None, Some("00:00-24:00"), Some("Europe/Berlin"));
        assert_eq!(w.next_change(ts("2026-10-24T23:30:00Z")), Some(ts("2026-10-25T01:00:00Z")));
        for probe in ["2026-03-29T00:30:00Z", "2026-03-29T01:00:00Z", "2026-10-25T00:30:00Z", "2026-11-23T22:59:59Z"] {
            // contains() never changes strictly between now and next_change.
            let w = window(Some(&["sun", "mon"]), Some("02:15-03:00"), Some("Europe/Berlin"));
            let now = ts(probe);
            let next = w.next_change(now).unwrap_or_else(|| unreachable!());
            let mut t = now;
            while t < next {
                assert_eq!(w.contains(t), w.contains(now), "{probe}: changed at {t} before {next}");
                t = t.checked_add(jiff::SignedDuration::from_secs(60)).unwrap_or_else(|_| unreachable!());
            }
        }
        let def = WhenDef {
            days: None,
            hours: None,
            timezone: None,
            not_before: Some("2026-11-23T09:00:00Z".into()),
            not_after: Some("2026-11-23T09:30:00Z".into()),
        };
        let w = TimeWindow::compile(&def).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(w.next_change(ts("2026-11-23T08:00:00Z")), Some(ts("2026-11-23T09:00:00Z")));
        assert_eq!(w.next_change(ts("2026-11-23T09:10:00Z")), Some(ts("2026-11-23T09:30:00.000000001Z")));
        assert_eq!(w.next_change(ts("2026-11-23T10:00:00Z")), None);
    }

    #[test]
    fn bad_windows() {
        let mut def = WhenDef {
            days: None,
            hours: Some("09:00-09:00".into()),
            timezone: None,
            not_before: None,
            not_after: None,
        };
        assert!(TimeWindow::compile(&def).is_err());
        def.hours = Some("9:00-18:00".into());
        assert!(TimeWindow::compile(&def).is_err());
        def.hours = Some("24:00-02:00".into());
        assert!(TimeWindow::compile(&def).is_err());
        def.hours = None;
        def.timezone = Some("Mars/Olympus".into());
        assert!(TimeWindow::compile(&def).is_err());
        def.timezone = None;
        def.not_before = Some("2026-11-23".into());
        assert!(TimeWindow::compile(&def).is_err());
    }
}
