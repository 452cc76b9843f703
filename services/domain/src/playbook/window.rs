//! Time windows: weekly (days and hours in a zone or at an offset) or absolute.

#[allow(unused_imports)]
use super::*;

/// A time window: weekly (`days`, `from`, `to`, read in `timezone` or at
/// `utc_offset`, UTC if neither) or absolute (`start`, `end`, RFC 3339).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawWindow")]
pub enum Window {
    Weekly {
        days: Vec<Weekday>,
        from: NaiveTime,
        to: NaiveTime,
        zone: WindowZone,
    },
    Absolute {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
}

/// Where a weekly window's days and times are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowZone {
    /// A fixed offset from UTC (`utc_offset: "+01:00"`): no daylight saving.
    Offset(FixedOffset),
    /// An IANA time zone (`timezone: Europe/Berlin`): the local wall clock,
    /// daylight saving included.
    Named(Tz),
}

impl WindowZone {
    /// The zone's offset from UTC at `at` (a named zone's changes with daylight saving).
    fn offset_at(self, at: DateTime<Utc>) -> FixedOffset {
        match self {
            WindowZone::Offset(o) => o,
            WindowZone::Named(z) => z.offset_from_utc_datetime(&at.naive_utc()).fix(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    #[serde(default)]
    days: Option<Vec<String>>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    utc_offset: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    start: Option<DateTime<Utc>>,
    #[serde(default)]
    end: Option<DateTime<Utc>>,
}

impl TryFrom<RawWindow> for Window {
    type Error = String;
    fn try_from(r: RawWindow) -> Result<Window, String> {
        if let (Some(start), Some(end)) = (r.start, r.end) {
            if r.days.is_some() || r.from.is_some() || r.to.is_some() {
                return Err("a window is either start/end or days/from/to, not both".into());
            }
            if r.utc_offset.is_some() || r.timezone.is_some() {
                return Err(
                    "an absolute window's start and end carry their own offset (like 2026-12-24T00:00:00+01:00): drop utc_offset / timezone".into(),
                );
            }
            if end <= start {
                return Err("window end must be after its start".into());
            }
            return Ok(Window::Absolute { start, end });
        }
        if r.start.is_some() || r.end.is_some() {
            return Err("an absolute window needs both start and end".into());
        }
        let time = |v: Option<String>, key: &str, default: &str| -> Result<NaiveTime, String> {
            let v = v.unwrap_or_else(|| default.to_string());
            NaiveTime::parse_from_str(&v, "%H:%M")
                .map_err(|_| format!("window {key} {v:?} is not a time like \"09:30\""))
        };
        let mut days = Vec::new();
        for d in r.days.unwrap_or_else(|| vec!["mon-sun".into()]) {
            days.extend(parse_days(&d)?);
        }
        let zone = match (r.utc_offset, r.timezone) {
            (Some(_), Some(_)) => {
                return Err("a window takes utc_offset or timezone, not both".into())
            }
            (Some(o), None) => WindowZone::Offset(parse_offset(&o)?),
            (None, Some(z)) => WindowZone::Named(z.parse::<Tz>().map_err(|_| {
                format!("window timezone {z:?} is not an IANA time zone like \"Europe/Berlin\" or \"America/New_York\"")
            })?),
            (None, None) => WindowZone::Named(Tz::UTC),
        };
        Ok(Window::Weekly {
            days,
            from: time(r.from, "from", "00:00")?,
            to: time(r.to, "to", "23:59")?,
            zone,
        })
    }
}

fn parse_days(s: &str) -> Result<Vec<Weekday>, String> {
    let day = |d: &str| -> Result<Weekday, String> {
        d.trim().parse::<Weekday>().map_err(|_| {
            format!("{d:?} is not a weekday: use mon, tue, …, sun or a range like mon-fri")
        })
    };
    match s.split_once('-') {
        None => Ok(vec![day(s)?]),
        Some((a, b)) => {
            let (mut d, end) = (day(a)?, day(b)?);
            let mut out = vec![d];
            while d != end {
                d = d.succ();
                out.push(d);
            }
            Ok(out)
        }
    }
}

fn parse_offset(s: &str) -> Result<FixedOffset, String> {
    let bad = || format!("utc_offset {s:?} is not like \"+01:00\" or \"-05:30\"");
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let secs =
        h.parse::<i32>().map_err(|_| bad())? * 3600 + m.parse::<i32>().map_err(|_| bad())? * 60;
    FixedOffset::east_opt(sign * secs).ok_or_else(bad)
}

impl Window {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        match self {
            Window::Absolute { start, end } => *start <= at && at < *end,
            Window::Weekly {
                days,
                from,
                to,
                zone,
            } => {
                let local = at.with_timezone(&zone.offset_at(at));
                let (t, day) = (local.time(), local.weekday());
                if from <= to {
                    days.contains(&day) && *from <= t && t <= *to
                } else {
                    // Crosses midnight: the part after midnight belongs to the day before.
                    (days.contains(&day) && t >= *from) || (days.contains(&day.pred()) && t <= *to)
                }
            }
        }
    }
}
