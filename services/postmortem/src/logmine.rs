//! Log pattern mining, Drain-style: each line is split into tokens, variable
//! parts (numbers, hex, UUIDs, IPs, durations, quoted strings) are masked, and
//! the line joins the most similar template of the same length and first token,
//! or starts a new one; where a joined line differs, the template gets `<*>`.
//!
//! It streams: memory is bounded by the number of templates (capped), never by
//! the number of lines.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use firebreak_domain::limits::truncate;
use serde::Serialize;

/// Lines join a template when at least this share of their tokens match it.
const SIMILARITY: f64 = 0.5;
/// Templates kept at most; lines that would start more count as "other".
const MAX_TEMPLATES: usize = 5_000;
/// Tokens looked at per line; the rest of a very long line is one `<…>`.
const MAX_TOKENS: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct Pattern {
    pub template: String,
    pub count: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Lines before the reference moment (the suspect deploy).
    pub before: u64,
    pub after: u64,
    /// One line as it was seen, for the reader.
    pub example: String,
    pub level: Option<String>,
}

impl Pattern {
    /// Appeared only after the reference moment.
    pub fn is_new(&self) -> bool {
        self.before == 0 && self.after > 0
    }
}

struct Cluster {
    tokens: Vec<String>,
    pattern: Pattern,
}

/// Streams lines in; [`Miner::patterns`] gives the templates.
pub struct Miner {
    /// (token count, first token) -> cluster indexes.
    groups: HashMap<(usize, String), Vec<usize>>,
    clusters: Vec<Cluster>,
    reference: Option<DateTime<Utc>>,
    pub lines: u64,
    pub overflow: u64,
}

impl Miner {
    /// `reference`: lines before it count as `before`, the rest as `after`.
    pub fn new(reference: Option<DateTime<Utc>>) -> Miner {
        Miner {
            groups: HashMap::new(),
            clusters: Vec::new(),
            reference,
            lines: 0,
            overflow: 0,
        }
    }

    pub fn add(&mut self, at: DateTime<Utc>, level: Option<&str>, line: &str) {
        self.lines += 1;
        let tokens = tokenize(line);
        let key = (tokens.len(), tokens.first().cloned().unwrap_or_default());
        let before = self.reference.is_some_and(|r| at < r);
        let candidates = self.groups.entry(key).or_default();
        let mut best: Option<(usize, f64)> = None;
        for &i in candidates.iter() {
            let sim = similarity(&self.clusters[i].tokens, &tokens);
            if sim >= SIMILARITY && best.is_none_or(|(_, s)| sim > s) {
                best = Some((i, sim));
            }
        }
        let index = match best {
            Some((i, _)) => {
                let c = &mut self.clusters[i];
                for (t, new) in c.tokens.iter_mut().zip(&tokens) {
                    if t != new && t != "<*>" {
                        *t = "<*>".to_string();
                    }
                }
                i
            }
            None => {
                if self.clusters.len() >= MAX_TEMPLATES {
                    self.overflow += 1;
                    return;
                }
                self.clusters.push(Cluster {
                    tokens: tokens.clone(),
                    pattern: Pattern {
                        template: String::new(),
                        count: 0,
                        first_seen: at,
                        last_seen: at,
                        before: 0,
                        after: 0,
                        example: truncate(line, 300),
                        level: level.map(str::to_string),
                    },
                });
                let i = self.clusters.len() - 1;
                candidates.push(i);
                i
            }
        };
        let p = &mut self.clusters[index].pattern;
        p.count += 1;
        p.first_seen = p.first_seen.min(at);
        p.last_seen = p.last_seen.max(at);
        if before {
            p.before += 1;
        } else {
            p.after += 1;
        }
    }

    /// Templates, most frequent first.
    pub fn patterns(&self) -> Vec<Pattern> {
        let mut out: Vec<Pattern> = self
            .clusters
            .iter()
            .map(|c| {
                let mut p = c.pattern.clone();
                p.template = c.tokens.join(" ");
                p
            })
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then(a.first_seen.cmp(&b.first_seen)));
        out
    }
}

fn similarity(template: &[String], tokens: &[String]) -> f64 {
    if template.is_empty() {
        return 1.0;
    }
    let same = template
        .iter()
        .zip(tokens)
        .filter(|(t, n)| *t == *n || *t == "<*>")
        .count();
    same as f64 / template.len() as f64
}

/// Splits on whitespace and masks the variable parts of each token.
pub fn tokenize(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (n, raw) in line.split_whitespace().enumerate() {
        if n == MAX_TOKENS {
            out.push("<…>".to_string());
            break;
        }
        out.push(mask(raw));
    }
    out
}

/// Masks one token: whole-token kinds first, then `key=value`, then digit runs.
pub fn mask(token: &str) -> String {
    // Keep surrounding punctuation: `(id=42),` -> `(id=<NUM>),`.
    let start = token
        .find(|c: char| c.is_alphanumeric() || c == '"' || c == '\'')
        .unwrap_or(token.len());
    let end = token
        .rfind(|c: char| c.is_alphanumeric() || c == '"' || c == '\'')
        .map(|i| i + token[i..].chars().next().map_or(1, char::len_utf8))
        .unwrap_or(start);
    if start >= end {
        return token.to_string();
    }
    let (pre, core, post) = (&token[..start], &token[start..end], &token[end..]);
    format!("{pre}{}{post}", mask_core(core))
}

fn mask_core(core: &str) -> String {
    if let Some(kind) = classify(core) {
        return kind.to_string();
    }
    if let Some((k, v)) = core.split_once('=') {
        if !k.is_empty() {
            return format!("{k}={}", mask_core(v));
        }
    }
    if let Some((k, v)) = core.split_once(':') {
        // host:port, file.rs:123, key:value
        if !k.is_empty() && !v.is_empty() && !v.contains(':') {
            if let Some(kind) = classify(v) {
                return format!("{}:{kind}", mask_core(k));
            }
        }
    }
    // Digit runs inside a word: user-12345 -> user-<NUM>.
    let mut out = String::with_capacity(core.len());
    let mut in_digits = false;
    for c in core.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push_str("<NUM>");
                in_digits = true;
            }
        } else {
            in_digits = false;
            out.push(c);
        }
    }
    out
}

fn classify(s: &str) -> Option<&'static str> {
    let b = s.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        return Some("<STR>");
    }
    if is_number(s) {
        return Some("<NUM>");
    }
    if is_uuid(s) {
        return Some("<UUID>");
    }
    if is_ipv4(s) {
        return Some("<IP>");
    }
    if is_duration(s) {
        return Some("<DUR>");
    }
    if is_hex(s) {
        return Some("<HEX>");
    }
    None
}

fn is_number(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ',' || c == '%')
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_ipv4(s: &str) -> bool {
    let host = match s.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty() => h,
        _ => s,
    };
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.chars().all(|c| c.is_ascii_digit()))
}

fn is_duration(s: &str) -> bool {
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    if digits_end == 0 || !s.as_bytes()[0].is_ascii_digit() {
        return false;
    }
    matches!(
        &s[digits_end..],
        "ms" | "s" | "m" | "h" | "us" | "µs" | "ns" | "sec" | "secs" | "min" | "mins"
    )
}

fn is_hex(s: &str) -> bool {
    let body = s.strip_prefix("0x").unwrap_or(s);
    let prefixed = body.len() != s.len();
    body.len() >= if prefixed { 1 } else { 8 }
        && body.chars().all(|c| c.is_ascii_hexdigit())
        && (prefixed || body.chars().any(|c| c.is_ascii_digit()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn masks_the_variable_parts() {
        let m = |s: &str| tokenize(s).join(" ");
        assert_eq!(
            m("GET /api/orders/12345 took 532ms from 10.0.3.17:52311 req=9f8e7d6c5b4a"),
            "GET /api/orders/<NUM> took <DUR> from <IP> req=<HEX>"
        );
        assert_eq!(
            m("user 0b7e4c1a-9d3f-4e2b-8a6c-1f2e3d4c5b6a not found (code=404)"),
            "user <UUID> not found (code=<NUM>)"
        );
        assert_eq!(
            m("at com.shop.PaymentClient.charge(PaymentClient.java:218)"),
            "at com.shop.PaymentClient.charge(PaymentClient.java:<NUM>)"
        );
        assert_eq!(m("retry 3/5 after 1.5s"), "retry <NUM>/<NUM> after <DUR>");
        assert_eq!(m("key \"abc def\" missing"), "key \"abc def\" missing");
        assert_eq!(
            m("deadbeef is not hex-looking enough"),
            "deadbeef is not hex-looking enough"
        );
        assert_eq!(m("ptr 0x7ffd1234"), "ptr <HEX>");
    }

    fn t(min: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T14:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + Duration::minutes(min)
    }

    #[test]
    fn web_server_errors_timeouts_and_stack_traces_group_into_templates() {
        let mut m = Miner::new(Some(t(0)));
        for i in 0..200 {
            m.add(
                t(-30 + i % 20),
                Some("info"),
                &format!("GET /api/cart/{i} 200 {}ms", 10 + i % 7),
            );
        }
        for i in 0..120 {
            m.add(
                t(2 + i % 10),
                Some("error"),
                &format!(
                    "POST /api/payments 502 upstream timeout after {}ms to 10.1.2.{}:8443",
                    3000 + i,
                    i % 250
                ),
            );
            m.add(
                t(2 + i % 10),
                Some("error"),
                &format!(
                    "java.net.SocketTimeoutException: Read timed out (attempt {})",
                    i % 3 + 1
                ),
            );
            m.add(
                t(2 + i % 10),
                Some("error"),
                "\tat com.shop.payments.Gateway.charge(Gateway.java:118)",
            );
        }
        m.add(t(-5), Some("warn"), "cache miss ratio high: 0.42");
        let patterns = m.patterns();
        let find = |needle: &str| {
            patterns
                .iter()
                .find(|p| p.template.contains(needle))
                .unwrap()
        };
        let cart = find("/api/cart/");
        assert_eq!(cart.template, "GET /api/cart/<NUM> <NUM> <DUR>");
        assert_eq!(cart.count, 200);
        assert!(!cart.is_new());
        let timeout = find("upstream timeout");
        assert_eq!(
            timeout.template,
            "POST /api/payments <NUM> upstream timeout after <DUR> to <IP>"
        );
        assert_eq!(timeout.count, 120);
        assert!(timeout.is_new(), "appeared only after the deploy");
        assert_eq!(timeout.first_seen, t(2));
        let trace = find("Gateway.charge");
        assert_eq!(trace.count, 120);
        let exc = find("SocketTimeoutException");
        assert_eq!(
            exc.template,
            "java.net.SocketTimeoutException: Read timed out (attempt <NUM>)"
        );
        assert_eq!(patterns.len(), 5, "{patterns:#?}");
    }

    #[test]
    fn memory_is_bounded_by_templates() {
        let mut m = Miner::new(None);
        for i in 0..(MAX_TEMPLATES + 10) {
            // A distinct first word per line (letters only, so nothing masks it).
            let mut n = i;
            let mut word = String::new();
            loop {
                word.push(char::from(b'a' + (n % 26) as u8));
                n /= 26;
                if n == 0 {
                    break;
                }
            }
            m.add(t(0), None, &format!("{word} happened"));
        }
        assert_eq!(m.patterns().len(), MAX_TEMPLATES);
        assert_eq!(m.overflow, 10);
    }
}
