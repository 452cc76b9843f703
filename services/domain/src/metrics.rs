//! Operational counters, rendered in the Prometheus text format. Lock-free atomics:
//! the hot path pays one relaxed add per batch.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::events::EventKind;

const KINDS: usize = 4;
/// Upper bounds in seconds; a batch of events usually commits in milliseconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct PerKind([AtomicU64; KINDS]);

impl PerKind {
    fn add(&self, kind: EventKind, n: u64) {
        self.0[kind.index()].fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self, kind: EventKind) -> u64 {
        self.0[kind.index()].load(Ordering::Relaxed)
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Shared by every role of one process.
#[derive(Default)]
pub struct Metrics {
    received: PerKind,
    rejected: PerKind,
    throttled: PerKind,
    processed: PerKind,
    duplicates: PerKind,
    failed: PerKind,
    dead_lettered: PerKind,
    dead_lettered_unknown: AtomicU64,
    redelivered: PerKind,
    /// Unix microseconds of the engine's last commit and ingest's last
    /// durable publish (0: none yet by this process).
    last_commit: AtomicU64,
    last_publish: AtomicU64,
    incidents_opened: AtomicU64,
    incidents_resolved: AtomicU64,
    processing: Histogram,
    /// Remediation actions by outcome (rare: a lock is fine).
    actions: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    playbooks_loaded: AtomicU64,
    playbook_load_errors: AtomicU64,
    playbook_reloads_failed: AtomicU64,
    /// The id of the audit trail's last row, as the witness last saw it.
    audit_head: AtomicU64,
}

impl Metrics {
    /// Events accepted and durably queued by ingest.
    pub fn received(&self, kind: EventKind, n: u64) {
        self.received.add(kind, n);
    }
    /// Bodies refused by ingest (bad input, auth).
    pub fn rejected(&self, kind: EventKind) {
        self.rejected.add(kind, 1);
    }
    /// Bodies answered 503 because the bulk backlog is over its bound.
    pub fn throttled(&self, kind: EventKind) {
        self.throttled.add(kind, 1);
    }
    /// Events committed by the engine (new ones).
    pub fn processed(&self, kind: EventKind, n: u64) {
        self.processed.add(kind, n);
    }
    /// Events the engine had seen already (duplicates, redeliveries).
    pub fn duplicates(&self, kind: EventKind, n: u64) {
        self.duplicates.add(kind, n);
    }
    /// Events of messages the bus delivered again although their first
    /// delivery had committed (its ack was lost): stored once, counted here
    /// instead of again as processed or as duplicates.
    pub fn redelivered(&self, kind: EventKind, n: u64) {
        self.redelivered.add(kind, n);
    }
    /// The engine committed a batch now.
    pub fn committed(&self) {
        self.last_commit.store(now_micros(), Ordering::Relaxed);
    }
    /// Ingest durably queued a message now.
    pub fn published(&self) {
        self.last_publish.store(now_micros(), Ordering::Relaxed);
    }
    /// Batches the engine failed to commit (they are redelivered).
    pub fn failed(&self, kind: EventKind, n: u64) {
        self.failed.add(kind, n);
    }
    pub fn dead_lettered(&self, kind: Option<EventKind>) {
        match kind {
            Some(kind) => self.dead_lettered.add(kind, 1),
            // A routing key Firebreak does not know names no kind.
            None => {
                self.dead_lettered_unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    pub fn incident_opened(&self, n: u64) {
        self.incidents_opened.fetch_add(n, Ordering::Relaxed);
    }
    pub fn incident_resolved(&self, n: u64) {
        self.incidents_resolved.fetch_add(n, Ordering::Relaxed);
    }
    pub fn observe_processing(&self, seconds: f64) {
        let h = &self.processing;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// A remediation action reached `outcome` (requested, held, succeeded, …).
    pub fn action(&self, outcome: &'static str) {
        if let Ok(mut map) = self.actions.lock() {
            *map.entry(outcome).or_default() += 1;
        }
    }

    pub fn action_total(&self, outcome: &str) -> u64 {
        self.actions
            .lock()
            .map(|m| m.get(outcome).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The playbook set after a (re)load: how many loaded, how many files failed.
    /// The audit trail's head moved to row `id` (a monitoring system keeps
    /// its history outside the database: a decrease is a removed tail).
    pub fn audit_head(&self, id: u64) {
        self.audit_head.store(id, Ordering::Relaxed);
    }

    pub fn playbooks(&self, loaded: u64, errors: u64) {
        self.playbooks_loaded.store(loaded, Ordering::Relaxed);
        self.playbook_load_errors.store(errors, Ordering::Relaxed);
        if errors > 0 {
            self.playbook_reloads_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn processed_total(&self, kind: EventKind) -> u64 {
        self.processed.get(kind)
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let per_kind: [(&str, &str, &PerKind); 8] = [
            (
                "firebreak_events_received_total",
                "Events accepted by ingest and durably queued.",
                &self.received,
            ),
            (
                "firebreak_events_rejected_total",
                "Request bodies refused by ingest.",
                &self.rejected,
            ),
            (
                "firebreak_events_throttled_total",
                "Request bodies answered 503 with Retry-After because the bulk backlog was over its bound.",
                &self.throttled,
            ),
            (
                "firebreak_events_processed_total",
                "New events committed by the engine.",
                &self.processed,
            ),
            (
                "firebreak_events_duplicate_total",
                "Events the engine had already processed.",
                &self.duplicates,
            ),
            (
                "firebreak_events_failed_total",
                "Events in batches that failed to commit and were retried.",
                &self.failed,
            ),
            (
                "firebreak_events_dead_lettered_total",
                "Bus messages sent to the dead-letter queue.",
                &self.dead_lettered,
            ),
            (
                "firebreak_events_redelivered_total",
                "Events the bus delivered again after their batch had committed (the ack was lost); not counted again.",
                &self.redelivered,
            ),
        ];
        for (name, help, counter) in per_kind {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for kind in EventKind::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{kind=\"{}\"}} {}",
                    kind.as_str(),
                    counter.get(kind)
                );
            }
            if std::ptr::eq(counter, &self.dead_lettered) {
                let unknown = self.dead_lettered_unknown.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{kind=\"unknown\"}} {unknown}");
            }
        }
        let name = "firebreak_actions_total";
        let _ = writeln!(
            out,
            "# HELP {name} Remediation actions by outcome.\n# TYPE {name} counter"
        );
        if let Ok(map) = self.actions.lock() {
            for (outcome, n) in map.iter() {
                let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {n}");
            }
        }
        for (name, help, kind, value) in [
            (
                "firebreak_incidents_opened_total",
                "Incidents opened.",
                "counter",
                &self.incidents_opened,
            ),
            (
                "firebreak_incidents_resolved_total",
                "Incidents resolved.",
                "counter",
                &self.incidents_resolved,
            ),
            (
                "firebreak_playbooks_loaded",
                "Playbooks in the active set.",
                "gauge",
                &self.playbooks_loaded,
            ),
            (
                "firebreak_playbook_load_errors",
                "Playbook files that failed to load at the last (re)load.",
                "gauge",
                &self.playbook_load_errors,
            ),
            (
                "firebreak_playbook_reloads_failed_total",
                "Playbook (re)loads that found a bad file.",
                "counter",
                &self.playbook_reloads_failed,
            ),
            (
                "firebreak_audit_head_id",
                "The id of the audit trail's last row (a decrease means rows were removed).",
                "gauge",
                &self.audit_head,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let now = now_micros();
        for (what, help, at) in [
            (
                "commit",
                "the engine last committed a batch to the store",
                &self.last_commit,
            ),
            (
                "publish",
                "ingest last had a message durably queued on the bus",
                &self.last_publish,
            ),
        ] {
            let at = at.load(Ordering::Relaxed);
            if at == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "# HELP firebreak_last_{what}_timestamp_seconds When {help} (Unix time).\n# TYPE firebreak_last_{what}_timestamp_seconds gauge\nfirebreak_last_{what}_timestamp_seconds {:.3}",
                at as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "# HELP firebreak_seconds_since_last_{what} Seconds since {help}.\n# TYPE firebreak_seconds_since_last_{what} gauge\nfirebreak_seconds_since_last_{what} {:.3}",
                now.saturating_sub(at) as f64 / 1e6
            );
        }
        let name = "firebreak_batch_processing_seconds";
        let _ = writeln!(out, "# HELP {name} Time to process and commit one batch of bus messages.\n# TYPE {name} histogram");
        let h = &self.processing;
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                h.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.received(EventKind::Alert, 3);
        m.processed(EventKind::Deploy, 2);
        m.observe_processing(0.002);
        let text = m.render();
        assert!(text.contains("firebreak_events_received_total{kind=\"alert\"} 3"));
        assert!(text.contains("firebreak_events_processed_total{kind=\"deploy\"} 2"));
        assert!(text.contains("firebreak_batch_processing_seconds_bucket{le=\"0.0025\"} 1"));
        assert!(text.contains("firebreak_batch_processing_seconds_bucket{le=\"0.001\"} 0"));
        assert!(text.contains("firebreak_batch_processing_seconds_count 1"));
    }
}
