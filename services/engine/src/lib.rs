//! Firebreak's engine: consumes the bus, groups alerts into incidents, attaches
//! deploys and gate results, keeps every incident's timeline, and resolves
//! incidents once they have been quiet long enough.
//!
//! Invariants:
//! - a delivery is acked only after the transaction holding its effects commits;
//! - processing is idempotent (event ids, unique keys), so redeliveries and
//!   Alertmanager HA duplicates change nothing;
//! - a message that cannot be decoded is dead-lettered with the reason, once, and
//!   the consumer goes on.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use firebreak_bus::{Bus, BusError, Delivery, Lane, Subscription};
use firebreak_domain::alertmanager::AlertStatus;
use firebreak_domain::correlation::{self, CorrelationPolicy, GroupKey, Target};
use firebreak_domain::ids::lock_key;
use firebreak_domain::metrics::Metrics;
use firebreak_domain::timeline::{self, kind, NewEntry};
use firebreak_domain::{decode, AlertEvent, Decoded, DeployEvent, EventKind, GateResult, LogLine};
use firebreak_remediation::{PlaybookSet, Remediation};
use firebreak_store::{ServiceWindow, Store, StoreError, StoreTx};
use tokio_util::sync::CancellationToken;

pub mod dead_letters;

use firebreak_domain::playbook::Trigger;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub policy: CorrelationPolicy,
    /// Deliveries processed in one transaction at most.
    pub batch_max: usize,
    /// Unacked deliveries a consumer may hold (RabbitMQ prefetch).
    pub prefetch: u16,
    /// Concurrent consumers in this process.
    pub workers: usize,
    /// How often open incidents are checked for resolution.
    pub sweep_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            policy: CorrelationPolicy::default(),
            batch_max: 64,
            prefetch: 256,
            workers: 2,
            sweep_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// New events per kind (alert, deploy, gate, log).
    pub new: [u64; 4],
    pub duplicates: [u64; 4],
    pub incidents_opened: Vec<i64>,
    pub incidents_reopened: Vec<i64>,
    /// Actions claimed and ready for an executor.
    pub actions_ready: usize,
}

pub struct Engine {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    config: EngineConfig,
    playbooks: Arc<PlaybookSet>,
    /// Claims what matched playbooks call for (none: no automation).
    remediation: Option<Arc<Remediation>>,
    /// Cancelled when [`Engine::run`]'s shutdown is: a batch held through a
    /// store outage goes back to the queue then.
    stopping: CancellationToken,
    /// When the store became unavailable, while it is (logged once each way).
    store_down: std::sync::Mutex<Option<Instant>>,
}

/// Transient store failures are retried this many times in-process before the
/// deliveries go back to the queue.
const COMMIT_ATTEMPTS: u32 = 5;
/// The longest wait between tries to subscribe: the engine is back within
/// this of the broker's return, however long it was away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait between tries of a batch held through a store outage:
/// processing resumes within this of the store's return.
const HOLD_BACKOFF: Duration = Duration::from_millis(500);
/// Events per transaction on the bulk lane (a larger single body is still one).
const BULK_CHUNK: usize = 1_000;

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
        config: EngineConfig,
    ) -> Engine {
        let playbooks = Arc::new(PlaybookSet::empty(metrics.clone()));
        Engine {
            store,
            bus,
            metrics,
            config,
            playbooks,
            remediation: None,
            stopping: CancellationToken::new(),
            store_down: std::sync::Mutex::new(None),
        }
    }

    /// Claims actions through `remediation`: guarded rollouts' kills, and
    /// playbooks' steps once [`Engine::with_playbooks`] gives them.
    pub fn with_remediation(mut self, remediation: Arc<Remediation>) -> Engine {
        self.remediation = Some(remediation);
        self
    }

    /// Matches events against `playbooks` and claims their actions through `remediation`.
    pub fn with_playbooks(
        mut self,
        playbooks: Arc<PlaybookSet>,
        remediation: Arc<Remediation>,
    ) -> Engine {
        self.playbooks = playbooks;
        self.remediation = Some(remediation);
        self
    }

    /// Runs the consumers and the sweeper until `shutdown` is cancelled; work in
    /// flight finishes (or is redelivered later) before this returns.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        let (stopping, cancelled) = (self.stopping.clone(), shutdown.clone());
        tokio::spawn(async move {
            cancelled.cancelled().await;
            stopping.cancel();
        });
        // The urgent lane has a consumer of its own, so what a playbook acts
        // on is never queued behind a batch of the bulk backlog.
        let engine = self.clone();
        let urgent_shutdown = shutdown.clone();
        tasks.spawn(async move { engine.consume(Lane::Urgent, 0, urgent_shutdown).await });
        for worker in 0..self.config.workers.max(1) {
            let engine = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { engine.consume(Lane::Bulk, worker, shutdown).await });
        }
        let engine = self.clone();
        let sweeper_shutdown = shutdown.clone();
        tasks.spawn(async move { engine.sweep_loop(sweeper_shutdown).await });
        while tasks.join_next().await.is_some() {}
    }

    async fn consume(&self, lane: Lane, worker: usize, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let lane_name = lane.as_str();
        while !shutdown.is_cancelled() {
            let subscribed = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = self.bus.subscribe(self.config.prefetch, lane) => s,
            };
            let mut sub = match subscribed {
                Ok(sub) => {
                    tracing::info!(
                        lane = lane_name,
                        worker,
                        bus = self.bus.backend(),
                        "consumer subscribed"
                    );
                    backoff = Duration::from_millis(100);
                    sub
                }
                Err(e) => {
                    // Once per outage, not once per try.
                    if backoff == Duration::from_millis(100) {
                        tracing::warn!(worker, lane = lane_name, error = %e, "cannot subscribe: the bus is unavailable; retrying every {} s at most", MAX_BACKOFF.as_secs());
                    } else {
                        tracing::debug!(worker, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot subscribe; retrying");
                    }
                    sleep_or_cancel(backoff, &shutdown).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            loop {
                let batch = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    b = sub.next_batch(self.config.batch_max) => b,
                };
                let result = match batch {
                    // A bulk batch's writes give way to the urgent lane's
                    // and to actions (SQLite has one writer).
                    Ok(deliveries) if lane == Lane::Bulk => {
                        firebreak_store::bulk(self.handle(sub.as_mut(), deliveries, BULK_CHUNK))
                            .await
                    }
                    Ok(deliveries) => self.handle(sub.as_mut(), deliveries, usize::MAX).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    tracing::warn!(worker, error = %e, "consumer lost its subscription; resubscribing");
                    sleep_or_cancel(backoff, &shutdown).await;
                    break;
                }
            }
        }
    }

    /// Decodes, processes and settles one batch of deliveries. An error means the
    /// subscription is broken; unsettled deliveries will be redelivered.
    async fn handle(
        &self,
        sub: &mut dyn Subscription,
        deliveries: Vec<Delivery>,
        chunk: usize,
    ) -> Result<(), BusError> {
        let started = Instant::now();
        let now = Utc::now();
        let mut decoded = Vec::with_capacity(deliveries.len());
        let mut tags = Vec::with_capacity(deliveries.len());
        let mut again = Vec::with_capacity(deliveries.len());
        for d in &deliveries {
            let kind = EventKind::from_routing_key(&d.routing_key);
            let result = match kind {
                Some(kind) => decode(kind, &d.body, now).map_err(|e| e.to_string()),
                None => Err(format!(
                    "unknown routing key {:?}: use alert.<service>, deploy.<service>, gate.<service> or log.<service>",
                    d.routing_key
                )),
            };
            match result {
                Ok(events) => {
                    decoded.push(events);
                    tags.push(d.tag);
                    again.push(d.redelivered);
                }
                Err(reason) => {
                    tracing::warn!(routing_key = %d.routing_key, %reason, "dead-lettering a message that cannot be decoded");
                    sub.dead_letter(d, &reason).await?;
                    self.metrics.dead_lettered(kind);
                }
            }
        }
        if decoded.is_empty() {
            return Ok(());
        }
        // Commit in chunks of about `chunk` events: a transaction of a bulk
        // batch then holds SQLite's one writer (or a group's row locks) for
        // tens of milliseconds, not the whole batch's hundreds. Redelivered
        // messages commit in chunks of their own, so what they find already
        // stored is told apart from duplicates.
        let mut start = 0;
        while start < decoded.len() {
            let mut end = start;
            let mut events = 0;
            while end < decoded.len()
                && (end == start
                    || (events + decoded[end].len() <= chunk && again[end] == again[start]))
            {
                events += decoded[end].len();
                end += 1;
            }
            self.settle(sub, &decoded[start..end], &tags[start..end], again[start])
                .await?;
            start = end;
        }
        self.metrics
            .observe_processing(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Commits decoded bodies in one transaction and settles their deliveries.
    /// What committed is counted before the ack: an ack that fails after the
    /// commit (the connection went) brings the messages back as redeliveries,
    /// which find their events stored and count them as redelivered, so each
    /// event is counted once as processed.
    async fn settle(
        &self,
        sub: &mut dyn Subscription,
        decoded: &[Decoded],
        tags: &[u64],
        redelivered: bool,
    ) -> Result<(), BusError> {
        let mut result = self.process_with_retry(decoded).await;
        if matches!(result, Err(StoreError::Unavailable(_))) {
            result = match self.hold(decoded).await {
                Some(r) => r,
                None => {
                    // Shutting down mid-outage: back to the queue.
                    sub.requeue(tags).await?;
                    return Ok(());
                }
            };
        }
        match result {
            Ok(outcome) => {
                self.record(&outcome, redelivered);
                sub.ack(tags).await?;
            }
            Err(e) if decoded.len() > 1 && !e.is_transient() => {
                // Find the message that fails rather than holding back the batch.
                tracing::warn!(error = %e, messages = decoded.len(), "batch failed; processing its messages one by one");
                for (events, tag) in decoded.iter().zip(tags) {
                    match self.process_with_retry(std::slice::from_ref(events)).await {
                        Ok(outcome) => {
                            self.record(&outcome, redelivered);
                            sub.ack(&[*tag]).await?;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, kind = events.kind().as_str(), "message failed to process; returned to the queue");
                            self.metrics.failed(events.kind(), events.len() as u64);
                            sub.requeue(&[*tag]).await?;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, messages = decoded.len(), "batch failed to commit; returned to the queue");
                for events in decoded {
                    self.metrics.failed(events.kind(), events.len() as u64);
                }
                sub.requeue(tags).await?;
            }
        }
        Ok(())
    }

    /// The store is unavailable: keep the batch unacknowledged and try again
    /// with a backoff (at most [`HOLD_BACKOFF`]) until it commits, another
    /// kind of error comes, or the engine stops (`None`). Requeueing instead
    /// would count a delivery each time and dead-letter good events after
    /// the delivery limit; an outage only delays them. Logged once when the
    /// store goes and once when it comes back, whichever worker sees it.
    async fn hold(&self, decoded: &[Decoded]) -> Option<Result<Outcome, StoreError>> {
        {
            let mut down = self
                .store_down
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if down.is_none() {
                *down = Some(Instant::now());
                tracing::error!("the store is unavailable: holding deliveries unacknowledged and retrying until it is back (nothing is requeued or dead-lettered for it)");
            }
        }
        let mut wait = Duration::from_millis(200);
        loop {
            tokio::select! {
                _ = self.stopping.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
            match self.process_with_retry(decoded).await {
                Err(StoreError::Unavailable(_)) => wait = (wait * 2).min(HOLD_BACKOFF),
                other => {
                    let since = self
                        .store_down
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take();
                    if let Some(since) = since {
                        tracing::warn!(
                            down_seconds = since.elapsed().as_secs_f64(),
                            "the store is back; processing resumes"
                        );
                    }
                    return Some(other);
                }
            }
        }
    }

    fn record(&self, outcome: &Outcome, redelivered: bool) {
        self.metrics.committed();
        for kind in EventKind::ALL {
            self.metrics.processed(kind, outcome.new[kind.index()]);
            let seen = outcome.duplicates[kind.index()];
            if redelivered {
                self.metrics.redelivered(kind, seen);
            } else {
                self.metrics.duplicates(kind, seen);
            }
        }
        self.metrics
            .incident_opened(outcome.incidents_opened.len() as u64);
        for id in &outcome.incidents_opened {
            tracing::info!(incident = id, "incident opened");
        }
        for id in &outcome.incidents_reopened {
            tracing::info!(incident = id, "incident reopened");
        }
    }

    async fn process_with_retry(&self, batch: &[Decoded]) -> Result<Outcome, StoreError> {
        let mut delay = Duration::from_millis(20);
        let mut attempt = 1;
        loop {
            match self.process(batch).await {
                Err(e) if e.is_transient() && attempt < COMMIT_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "transient store error; retrying batch");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Applies a batch of decoded bodies in one transaction.
    pub async fn process(&self, batch: &[Decoded]) -> Result<Outcome, StoreError> {
        let mut alerts: Vec<&AlertEvent> = Vec::new();
        let mut deploys: Vec<DeployEvent> = Vec::new();
        let mut gates: Vec<GateResult> = Vec::new();
        let mut logs: Vec<LogLine> = Vec::new();
        let mut outcome = Outcome::default();
        let mut seen: HashSet<&str> = HashSet::new();
        for body in batch {
            match body {
                Decoded::Alerts(a) => {
                    for alert in a {
                        if seen.insert(alert.id.as_str()) {
                            alerts.push(alert);
                        } else {
                            outcome.duplicates[EventKind::Alert.index()] += 1;
                        }
                    }
                }
                Decoded::Deploys(d) => deploys.extend(d.iter().cloned()),
                Decoded::Gates(g) => gates.extend(g.iter().cloned()),
                Decoded::Logs(l) => logs.extend(l.iter().cloned()),
            }
        }
        let mut tx = self.store.begin().await?;
        // Every lock this batch needs, taken at once in sorted order (no
        // deadlocks between batches): the incident groups its alerts touch, and
        // each service involved, so that a deploy and the incident it belongs to
        // never miss each other when two batches commit side by side.
        let policy = &self.config.policy;
        let mut locks: BTreeSet<i64> = BTreeSet::new();
        for a in &alerts {
            let group = policy.group_key(&a.labels);
            locks.insert(lock_key(&group.key));
            if let Some(service) = &group.service {
                locks.insert(service_lock(service));
            }
        }
        locks.extend(deploys.iter().map(|d| service_lock(&d.service)));
        locks.extend(gates.iter().map(|g| service_lock(&g.service)));
        if !locks.is_empty() {
            tx.lock_groups(&locks.into_iter().collect::<Vec<_>>())
                .await?;
        }
        let mut entries = Vec::new();
        let mut triggers: Vec<(Trigger<'_>, Option<i64>)> = Vec::new();
        let mut placed_alerts: Vec<(Option<i64>, &AlertEvent)> = Vec::new();
        if !alerts.is_empty() {
            self.apply_alerts(
                tx.as_mut(),
                &alerts,
                &mut entries,
                &mut outcome,
                &mut placed_alerts,
            )
            .await?;
        }
        triggers.extend(placed_alerts.iter().map(|(i, a)| (Trigger::Alert(a), *i)));
        if !deploys.is_empty() {
            let fresh = self
                .apply_deploys(tx.as_mut(), &deploys, &mut entries, &mut outcome)
                .await?;
            triggers.extend(
                deploys
                    .iter()
                    .filter_map(|d| fresh.get(d.id.as_str()).map(|i| (Trigger::Deploy(d), *i))),
            );
        }
        if !gates.is_empty() {
            let fresh = self
                .apply_gates(tx.as_mut(), &gates, &mut entries, &mut outcome)
                .await?;
            triggers.extend(
                gates
                    .iter()
                    .filter_map(|g| fresh.get(g.id.as_str()).map(|i| (Trigger::Gate(g), *i))),
            );
        }
        if let Some(remediation) = &self.remediation {
            let set = self.playbooks.current();
            outcome.actions_ready = remediation
                .on_events(tx.as_mut(), &set, &triggers, &mut entries)
                .await?;
        }
        if !logs.is_empty() {
            let new = tx.insert_logs(&logs).await?;
            outcome.new[EventKind::Log.index()] = new;
            outcome.duplicates[EventKind::Log.index()] = logs.len() as u64 - new;
        }
        tx.insert_timeline(&entries).await?;
        tx.commit().await?;
        if outcome.actions_ready > 0 {
            if let Some(r) = &self.remediation {
                r.wake();
            }
        }
        Ok(outcome)
    }

    async fn apply_alerts<'a>(
        &self,
        tx: &mut dyn StoreTx,
        alerts: &[&'a AlertEvent],
        entries: &mut Vec<NewEntry>,
        outcome: &mut Outcome,
        placed_out: &mut Vec<(Option<i64>, &'a AlertEvent)>,
    ) -> Result<(), StoreError> {
        let policy = &self.config.policy;
        let keyed: Vec<(GroupKey, &'a AlertEvent)> = alerts
            .iter()
            .map(|a| (policy.group_key(&a.labels), *a))
            .collect();
        let ids: Vec<String> = alerts.iter().map(|a| a.id.clone()).collect();
        let existing = tx.existing_alert_ids(&ids).await?;
        let fresh: Vec<(GroupKey, &'a AlertEvent)> = keyed
            .into_iter()
            .filter(|(_, a)| !existing.contains(&a.id))
            .collect();
        outcome.duplicates[EventKind::Alert.index()] += (alerts.len() - fresh.len()) as u64;
        outcome.new[EventKind::Alert.index()] = fresh.len() as u64;
        if fresh.is_empty() {
            return Ok(());
        }

        let fresh_keys: Vec<String> = fresh
            .iter()
            .map(|(g, _)| g.key.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let heads: HashMap<String, _> = tx
            .latest_incidents(&fresh_keys)
            .await?
            .into_iter()
            .map(|h| (h.group_key.clone(), h))
            .collect();
        let plan = correlation::plan(&fresh, &heads, policy);

        let opened_ids = tx.open_incidents(&plan.opened).await?;
        let reopened: Vec<i64> = plan.reopened.iter().map(|(id, _)| *id).collect();
        if !reopened.is_empty() {
            tx.reopen_incidents(&reopened).await?;
        }
        let placed: Vec<(Option<i64>, &'a AlertEvent)> = fresh
            .iter()
            .zip(&plan.targets)
            .map(|((_, alert), target)| {
                let incident = match target {
                    Target::Existing(id) => Some(*id),
                    Target::Opened(i) => opened_ids.get(*i).copied(),
                    Target::None => None,
                };
                (incident, *alert)
            })
            .collect();
        tx.insert_alerts(&placed).await?;
        placed_out.extend(placed.iter().copied());

        // One state row per (incident, fingerprint): the newest notification wins.
        let mut current: HashMap<(i64, &str), &AlertEvent> = HashMap::new();
        let mut truncated: HashMap<i64, u64> = HashMap::new();
        for (incident, alert) in &placed {
            let Some(incident) = *incident else { continue };
            if alert.truncated_alerts > 0 {
                truncated.insert(incident, alert.truncated_alerts);
            }
            current
                .entry((incident, alert.fingerprint.as_str()))
                .and_modify(|held| {
                    if newer(alert, held) {
                        *held = alert;
                    }
                })
                .or_insert(alert);
        }
        let states: Vec<(i64, &AlertEvent)> =
            current.into_iter().map(|((id, _), a)| (id, a)).collect();
        tx.upsert_incident_alerts(&states).await?;

        for (incident, dropped) in truncated {
            entries.push(timeline::lifecycle_entry(
                incident,
                Utc::now(),
                kind::ALERTS_TRUNCATED,
                format!("Alertmanager left {dropped} alerts out of a notification (max_alerts); the incident may have more alerts than shown"),
            ));
        }
        for (new, id) in plan.opened.iter().zip(&opened_ids) {
            entries.push(timeline::lifecycle_entry(
                *id,
                new.opened_at,
                kind::INCIDENT_OPENED,
                format!("Incident opened: {}", new.title),
            ));
            self.attach_history(tx, *id, &new.group, new.opened_at, entries)
                .await?;
        }
        for (id, at) in &plan.reopened {
            entries.push(timeline::lifecycle_entry(
                *id,
                *at,
                kind::INCIDENT_REOPENED,
                "Incident reopened: an alert fired again".into(),
            ));
        }
        outcome.incidents_opened = opened_ids;
        outcome.incidents_reopened = reopened;
        Ok(())
    }

    /// A new incident looks back: deploys of its service within the lookback
    /// window become suspect changes, and their gate results come along.
    async fn attach_history(
        &self,
        tx: &mut dyn StoreTx,
        incident: i64,
        group: &GroupKey,
        opened_at: DateTime<Utc>,
        entries: &mut Vec<NewEntry>,
    ) -> Result<(), StoreError> {
        let Some(service) = group.service.as_deref() else {
            return Ok(());
        };
        let window = ServiceWindow {
            service,
            environment: group.environment.as_deref(),
            from: opened_at - self.config.policy.deploy_lookback,
            to: opened_at,
        };
        let deploys = tx.deploys_between(window).await?;
        if !deploys.is_empty() {
            let pairs: Vec<(i64, String)> =
                deploys.iter().map(|d| (incident, d.id.clone())).collect();
            tx.attach_changes(&pairs).await?;
            entries.extend(deploys.iter().map(|d| timeline::deploy_entry(incident, d)));
        }
        let gates = tx.gates_between(window).await?;
        if !gates.is_empty() {
            let pairs: Vec<(i64, String)> =
                gates.iter().map(|g| (incident, g.id.clone())).collect();
            tx.attach_gates(&pairs).await?;
            entries.extend(gates.iter().map(|g| timeline::gate_entry(incident, g)));
        }
        Ok(())
    }

    /// Returns each new deploy with the incident it was attached to, if any.
    async fn apply_deploys(
        &self,
        tx: &mut dyn StoreTx,
        deploys: &[DeployEvent],
        entries: &mut Vec<NewEntry>,
        outcome: &mut Outcome,
    ) -> Result<HashMap<String, Option<i64>>, StoreError> {
        let new_ids = tx.insert_deploys(deploys).await?;
        let fresh = first_seen(EventKind::Deploy, deploys, &new_ids, |d| &d.id, outcome);
        let mut result: HashMap<String, Option<i64>> =
            fresh.iter().map(|d| (d.id.clone(), None)).collect();
        if fresh.is_empty() {
            return Ok(result);
        }
        let open = tx
            .open_incidents_for(&services_of(&fresh, |d| &d.service))
            .await?;
        let lookback = self.config.policy.deploy_lookback;
        let mut pairs = Vec::new();
        for d in &fresh {
            for inc in &open {
                if inc.service.as_deref() == Some(d.service.as_str())
                    && env_matches(inc.environment.as_deref(), d.environment.as_deref())
                    && d.started_at >= inc.opened_at - lookback
                {
                    pairs.push((inc.id, d.id.clone()));
                }
            }
        }
        for (incident, deploy_id) in &pairs {
            result.insert(deploy_id.clone(), Some(*incident));
        }
        if pairs.is_empty() {
            return Ok(result);
        }
        for (incident, deploy_id) in tx.attach_changes(&pairs).await? {
            if let Some(d) = fresh.iter().find(|d| d.id == deploy_id) {
                entries.push(timeline::deploy_entry(incident, d));
            }
        }
        Ok(result)
    }

    /// Returns each new gate result with an incident it was attached to, if any.
    async fn apply_gates(
        &self,
        tx: &mut dyn StoreTx,
        gates: &[GateResult],
        entries: &mut Vec<NewEntry>,
        outcome: &mut Outcome,
    ) -> Result<HashMap<String, Option<i64>>, StoreError> {
        let new_ids = tx.insert_gates(gates).await?;
        let fresh = first_seen(EventKind::Gate, gates, &new_ids, |g| &g.id, outcome);
        let mut result: HashMap<String, Option<i64>> =
            fresh.iter().map(|g| (g.id.clone(), None)).collect();
        if fresh.is_empty() {
            return Ok(result);
        }
        // The deploy each gate judged: named, or found by service and version.
        let mut deploy_of: HashMap<&str, String> = HashMap::new();
        for g in &fresh {
            let deploy = match (&g.deploy_id, &g.version) {
                (Some(id), _) => Some(id.clone()),
                (None, Some(version)) => {
                    tx.find_deploy(&g.service, g.environment.as_deref(), version)
                        .await?
                }
                (None, None) => None,
            };
            if let Some(deploy) = deploy {
                deploy_of.insert(g.id.as_str(), deploy);
            }
        }
        let deploy_ids: Vec<String> = deploy_of
            .values()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let by_deploy = if deploy_ids.is_empty() {
            Vec::new()
        } else {
            tx.incidents_of_deploys(&deploy_ids).await?
        };
        let open = tx
            .open_incidents_for(&services_of(&fresh, |g| &g.service))
            .await?;
        let lookback = self.config.policy.deploy_lookback;
        let mut pairs = BTreeSet::new();
        for g in &fresh {
            if let Some(deploy) = deploy_of.get(g.id.as_str()) {
                for (incident, d) in &by_deploy {
                    if d == deploy {
                        pairs.insert((*incident, g.id.clone()));
                    }
                }
            }
            for inc in &open {
                if inc.service.as_deref() == Some(g.service.as_str())
                    && env_matches(inc.environment.as_deref(), g.environment.as_deref())
                    && g.evaluated_at >= inc.opened_at - lookback
                {
                    pairs.insert((inc.id, g.id.clone()));
                }
            }
        }
        if pairs.is_empty() {
            return Ok(result);
        }
        let pairs: Vec<(i64, String)> = pairs.into_iter().collect();
        for (incident, gate_id) in &pairs {
            result.insert(gate_id.clone(), Some(*incident));
        }
        for (incident, gate_id) in tx.attach_gates(&pairs).await? {
            if let Some(g) = fresh.iter().find(|g| g.id == gate_id) {
                entries.push(timeline::gate_entry(incident, g));
            }
        }
        Ok(result)
    }

    async fn sweep_loop(&self, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.config.sweep_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            if let Err(e) = self.sweep(Utc::now()).await {
                tracing::warn!(error = %e, "resolution sweep failed; will try again");
            }
        }
    }

    /// Resolves open incidents whose alerts have all been resolved for at least
    /// the quiet period. Returns the incidents it resolved.
    pub async fn sweep(&self, now: DateTime<Utc>) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.store.begin().await?;
        let candidates = tx
            .resolvable_incidents(now - self.config.policy.quiet_period)
            .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let locks: Vec<i64> = candidates.iter().map(|(_, key, _)| lock_key(key)).collect();
        tx.lock_groups(&locks).await?;
        let wanted: Vec<(i64, DateTime<Utc>)> =
            candidates.iter().map(|(id, _, at)| (*id, *at)).collect();
        let resolved = tx.resolve_incidents(&wanted).await?;
        let entries: Vec<NewEntry> = wanted
            .iter()
            .filter(|(id, _)| resolved.contains(id))
            .map(|(id, at)| {
                timeline::lifecycle_entry(
                    *id,
                    *at,
                    kind::INCIDENT_RESOLVED,
                    "Incident resolved: all its alerts resolved".into(),
                )
            })
            .collect();
        tx.insert_timeline(&entries).await?;
        tx.commit().await?;
        self.metrics.incident_resolved(resolved.len() as u64);
        for id in &resolved {
            tracing::info!(incident = id, "incident resolved");
        }
        Ok(resolved)
    }
}

/// Whether `candidate` is a newer notification of the same alert than `held`:
/// a later start, or the resolution of the same firing.
fn newer(candidate: &AlertEvent, held: &AlertEvent) -> bool {
    candidate.starts_at > held.starts_at
        || (candidate.starts_at == held.starts_at && candidate.status == AlertStatus::Resolved)
}

/// The events stored for the first time (the others were already stored),
/// and both counts in `outcome`.
fn first_seen<'a, T>(
    kind: EventKind,
    events: &'a [T],
    new_ids: &HashSet<String>,
    id: impl Fn(&T) -> &String,
    outcome: &mut Outcome,
) -> Vec<&'a T> {
    outcome.new[kind.index()] = new_ids.len() as u64;
    outcome.duplicates[kind.index()] = (events.len() - new_ids.len()) as u64;
    events.iter().filter(|e| new_ids.contains(id(e))).collect()
}

/// The services `events` concern, each once.
fn services_of<T>(events: &[&T], service: impl Fn(&T) -> &String) -> Vec<String> {
    let services: BTreeSet<&String> = events.iter().map(|e| service(e)).collect();
    services.into_iter().cloned().collect()
}

/// Unknown environments match anything; known ones must agree.
fn env_matches(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// The lock that orders incident creation against deploys and gates of a service.
fn service_lock(service: &str) -> i64 {
    lock_key(&format!("service\u{0}{service}"))
}
