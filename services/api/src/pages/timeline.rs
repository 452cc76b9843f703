//! The incident's timeline as a picture: one time axis, a swim lane per kind
//! of thing (alerts; deploys and gates; actions; notes and the incident's own
//! moments), the suspect deploy and the moment the kill switch went off
//! marked across every lane. A lane with more entries than can be told apart
//! is drawn as counts per time slice, each a link that zooms into its slice;
//! every string in it is escaped here.

use chrono::{DateTime, Duration, Utc};
use firebreak_store::TimelineRow;

/// Which lane an entry belongs to.
pub fn lane(kind: &str) -> usize {
    match kind {
        "alert_firing" | "alert_resolved" | "alerts_truncated" => 0,
        "deploy" | "gate" => 1,
        k if k.starts_with("action_") || k == "playbook_skipped" => 2,
        _ => 3,
    }
}

pub const LANES: [&str; 4] = ["Alerts", "Deploys & gates", "Actions", "Notes & incident"];

/// A vertical line across the lanes, with a label.
pub struct Mark {
    pub at: DateTime<Utc>,
    pub label: String,
    pub class: &'static str,
}

/// More entries than this in one lane and it is drawn as counts.
const DOTS_PER_LANE: usize = 150;
const SLICES: i64 = 60;
const WIDTH: f64 = 1000.0;
const LEFT: f64 = 130.0;
const LANE_H: f64 = 44.0;
const TOP: f64 = 26.0;

pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// Tick times on round values (10:30, 10:35, …): the smallest step of a
/// 1-2-5-ish ladder that gives at most 7 ticks over `(from, to)`.
pub fn ticks(from: DateTime<Utc>, to: DateTime<Utc>) -> (Vec<DateTime<Utc>>, Duration) {
    const STEPS: &[i64] = &[
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200,
        86_400, 172_800, 604_800, 2_592_000,
    ];
    let span = (to - from).num_seconds().max(1);
    let step = STEPS
        .iter()
        .copied()
        .find(|s| span / s <= 6)
        .unwrap_or(span / 6 + 1);
    let first = from.timestamp().div_euclid(step) * step
        + if from.timestamp().rem_euclid(step) == 0 && from.timestamp_subsec_nanos() == 0 {
            0
        } else {
            step
        };
    let ticks = (0..)
        .map(|k| first + k * step)
        .take_while(|t| *t <= to.timestamp())
        .filter_map(|t| DateTime::from_timestamp(t, 0))
        .collect();
    (ticks, Duration::seconds(step))
}

fn short_time(t: DateTime<Utc>, span: Duration) -> String {
    if span > Duration::days(2) {
        t.format("%m-%d %H:%M").to_string()
    } else if span > Duration::minutes(10) {
        t.format("%H:%M").to_string()
    } else {
        t.format("%H:%M:%S").to_string()
    }
}

/// The SVG. `window` is the time range shown; `zoom` makes a link for a
/// slice (from, to).
pub fn svg(
    entries: &[TimelineRow],
    marks: &[Mark],
    window: (DateTime<Utc>, DateTime<Utc>),
    zoom: &dyn Fn(DateTime<Utc>, DateTime<Utc>) -> String,
) -> String {
    let (from, to) = window;
    let span = (to - from).max(Duration::seconds(1));
    let x = |t: DateTime<Utc>| -> f64 {
        let f = (t - from).num_milliseconds() as f64 / span.num_milliseconds() as f64;
        LEFT + f.clamp(0.0, 1.0) * (WIDTH - LEFT - 10.0)
    };
    let height = TOP + LANE_H * LANES.len() as f64 + 24.0;
    let mut lanes: [Vec<&TimelineRow>; 4] = Default::default();
    for e in entries.iter().filter(|e| e.at >= from && e.at <= to) {
        lanes[lane(&e.kind)].push(e);
    }
    // What lies before the window: counted per lane at its left edge, a link
    // that widens the window to show it.
    let mut earlier = [0usize; 4];
    let mut earliest: Option<DateTime<Utc>> = None;
    for e in entries.iter().filter(|e| e.at < from) {
        earlier[lane(&e.kind)] += 1;
        earliest = Some(earliest.map_or(e.at, |t: DateTime<Utc>| t.min(e.at)));
    }
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"timeline\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-labelledby=\"timeline-title\"><title id=\"timeline-title\">Timeline from {} to {} UTC: {} entries</title>",
        esc(&from.format("%Y-%m-%d %H:%M:%S").to_string()),
        esc(&to.format("%Y-%m-%d %H:%M:%S").to_string()),
        lanes.iter().map(Vec::len).sum::<usize>()
    );
    // Axis and ticks, on round times; labels show seconds only when the
    // step is under a minute.
    let (tick_times, step) = ticks(from, to);
    let label_span = if step < Duration::minutes(1) {
        Duration::minutes(1)
    } else {
        span.max(Duration::minutes(11))
    };
    for t in tick_times {
        let tx = x(t);
        let anchor = if tx > WIDTH - 40.0 { "end" } else { "middle" };
        out.push_str(&format!(
            "<line class=\"tick\" x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{TOP}\" y2=\"{:.1}\"/><text class=\"tick-label\" x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            height - 20.0,
            height - 6.0,
            esc(&short_time(t, label_span))
        ));
    }
    for (i, (name, items)) in LANES.iter().zip(lanes.iter()).enumerate() {
        let y = TOP + LANE_H * i as f64;
        let mid = y + LANE_H / 2.0;
        out.push_str(&format!(
            "<g class=\"lane lane-{i}\"><rect class=\"lane-bg\" x=\"0\" y=\"{y:.1}\" width=\"{WIDTH}\" height=\"{LANE_H}\"/><text class=\"lane-label\" x=\"6\" y=\"{:.1}\">{} ({})</text>",
            mid + 4.0,
            esc(name),
            items.len()
        ));
        if let (n @ 1.., Some(first)) = (earlier[i], earliest) {
            out.push_str(&format!(
                "<a href=\"{}\" class=\"zoom earlier\"><text class=\"edge\" data-earlier=\"{n}\" x=\"{:.1}\" y=\"{:.1}\">\u{25c2} {n} earlier</text></a>",
                esc(&zoom(first, to)),
                LEFT + 2.0,
                y + 12.0,
            ));
        }
        if items.len() > DOTS_PER_LANE {
            // Counts per slice, each a link that zooms in.
            let slice = span / SLICES as i32;
            let slice = if slice <= Duration::zero() {
                Duration::milliseconds(1)
            } else {
                slice
            };
            let mut counts = vec![0usize; SLICES as usize];
            for e in items {
                let k = ((e.at - from).num_milliseconds() / slice.num_milliseconds().max(1))
                    .clamp(0, SLICES - 1) as usize;
                counts[k] += 1;
            }
            let max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
            for (k, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
                let s_from = from + slice * k as i32;
                let s_to = s_from + slice;
                let (x0, x1) = (x(s_from), x(s_to));
                let h = (LANE_H - 8.0) * (*n as f64 / max).max(0.08);
                out.push_str(&format!(
                    "<a href=\"{}\" class=\"zoom\"><rect class=\"mark bucket\" data-count=\"{n}\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\"><title>{n} entries from {} to {}: zoom in</title></rect></a>",
                    esc(&zoom(s_from, s_to)),
                    y + LANE_H - 4.0 - h,
                    (x1 - x0 - 1.0).max(1.0),
                    esc(&short_time(s_from, span)),
                    esc(&short_time(s_to, span))
                ));
            }
        } else {
            for e in items {
                out.push_str(&format!(
                    "<circle class=\"mark dot kind-{}\" data-kind=\"{}\" cx=\"{:.1}\" cy=\"{mid:.1}\" r=\"5\"><title>{} {}: {}</title></circle>",
                    esc(&e.kind),
                    esc(&e.kind),
                    x(e.at),
                    esc(&e.at.format("%H:%M:%S").to_string()),
                    esc(&e.kind),
                    esc(&e.summary)
                ));
            }
        }
        out.push_str("</g>");
    }
    for m in marks.iter().filter(|m| m.at >= from && m.at <= to) {
        let mx = x(m.at);
        // Labels right of their line, or left of it near the right edge.
        let (lx, anchor) = if mx > WIDTH * 0.7 {
            (mx - 3.0, "end")
        } else {
            (mx + 3.0, "start")
        };
        out.push_str(&format!(
            "<g class=\"marker {}\"><line x1=\"{mx:.1}\" x2=\"{mx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/><text x=\"{lx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text></g>",
            m.class,
            TOP - 4.0,
            height - 20.0,
            TOP - 8.0,
            esc(&m.label)
        ));
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(i: i64, kind: &str, summary: &str, at: DateTime<Utc>) -> TimelineRow {
        TimelineRow {
            id: i,
            at,
            kind: kind.into(),
            source: "s".into(),
            summary: summary.into(),
            ref_id: format!("r{i}"),
        }
    }

    #[test]
    fn few_entries_are_dots_with_escaped_text() {
        let t0 = Utc::now();
        let rows = vec![
            row(1, "deploy", "v2", t0),
            row(
                2,
                "alert_firing",
                "<img src=x onerror=alert(1)>",
                t0 + Duration::minutes(1),
            ),
            row(3, "action_executed", "kill", t0 + Duration::minutes(2)),
            row(4, "note", "n", t0 + Duration::minutes(3)),
        ];
        let marks = [Mark {
            at: t0,
            label: "suspect: v2".into(),
            class: "suspect",
        }];
        let s = svg(&rows, &marks, (t0, t0 + Duration::minutes(5)), &|_, _| {
            String::new()
        });
        assert_eq!(s.matches("<circle class=\"mark dot").count(), 4);
        assert!(!s.contains("<img"), "{s}");
        assert!(s.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(s.contains("suspect: v2"));
    }

    #[test]
    fn many_entries_become_counts_that_zoom() {
        let t0 = Utc::now();
        let rows: Vec<TimelineRow> = (0..10_000)
            .map(|i| row(i, "alert_firing", "a", t0 + Duration::seconds(i)))
            .collect();
        let s = svg(&rows, &[], (t0, t0 + Duration::seconds(10_000)), &|a, b| {
            format!("?from={}&to={}", a.timestamp(), b.timestamp())
        });
        assert!(!s.contains("<circle"), "aggregated");
        let buckets = s.matches("class=\"mark bucket\"").count();
        assert!(buckets > 10 && buckets <= 60, "{buckets}");
        assert!(s.contains("href=\"?from="), "links zoom in");
        assert!(s.contains("&amp;to="), "escaped in the attribute");
        assert!(s.len() < 60_000, "{}", s.len());
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("a time")
            .with_timezone(&Utc)
    }

    #[test]
    fn ticks_fall_on_round_times() {
        let (ts, step) = ticks(at("2026-12-05T10:29:45Z"), at("2026-12-05T10:55:12Z"));
        assert_eq!(step, Duration::minutes(5));
        assert_eq!(
            ts.iter()
                .map(|x| x.format("%H:%M:%S").to_string())
                .collect::<Vec<_>>(),
            ["10:30:00", "10:35:00", "10:40:00", "10:45:00", "10:50:00", "10:55:00"]
        );
        let (ts, step) = ticks(at("2026-12-05T10:00:00Z"), at("2026-12-05T10:00:40Z"));
        assert_eq!(step, Duration::seconds(10));
        assert_eq!(ts.len(), 5, "10:00:00 .. 10:00:40");
        let (ts, _) = ticks(at("2026-12-01T00:00:00Z"), at("2026-12-05T00:00:00Z"));
        assert!(!ts.is_empty() && ts.len() <= 7, "{ts:?}");
    }
}
