//! The store contract and the engine's correlation rules, run against every store
//! implementation: SQLite in a temp dir and a fresh PostgreSQL database.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use firebreak_bus::EmbeddedBus;
use firebreak_domain::action::ActionSpec;
use firebreak_domain::correlation::{CorrelationPolicy, GroupKey, NewIncident};
use firebreak_domain::metrics::Metrics;
use firebreak_domain::playbook::{FlagState, KillSwitchStep, StepAction};
use firebreak_domain::{decode, Decoded, EventKind};
use firebreak_engine::{Engine, EngineConfig};
use firebreak_store::{
    ActionChange, ActionFilter, ActionStatus, AuditFilter, CauseWord, FlagWrite, IncidentFilter,
    NewAction, NewAudit, NewSession, NewUser, OutboxClaim, PostmortemSave, Presence, SaveOutcome,
    ServiceWindow, SlackClaim, Store, StoreError, TrackerStatus,
};
use firebreak_tests::{webhook, Pg, TestAlert};
use serde_json::json;

enum Backend {
    Sqlite,
    Postgres,
}

struct Harness {
    url: String,
    store: Arc<dyn Store>,
    engine: Arc<Engine>,
    _dir: tempfile::TempDir,
    pg: Option<Pg>,
}

impl Harness {
    async fn new(backend: Backend) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (url, pg) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("store.db").display()),
                None,
            ),
            Backend::Postgres => {
                let pg = Pg::fresh().await;
                (pg.url.clone(), Some(pg))
            }
        };
        let store: Arc<dyn Store> = Arc::from(firebreak_store::connect(&url).await.unwrap());
        store.migrate().await.unwrap();
        let bus = EmbeddedBus::open(&format!(
            "sqlite://{}",
            dir.path().join("queue.db").display()
        ))
        .await
        .unwrap();
        let config = EngineConfig {
            policy: CorrelationPolicy {
                quiet_period: Duration::zero(),
                ..CorrelationPolicy::default()
            },
            ..EngineConfig::default()
        };
        let engine = Arc::new(Engine::new(
            store.clone(),
            Arc::new(bus),
            Arc::new(Metrics::default()),
            config,
        ));
        Harness {
            url,
            store,
            engine,
            _dir: dir,
            pg,
        }
    }

    async fn finish(self) {
        self.store.close().await;
        if let Some(pg) = self.pg {
            pg.drop_db().await;
        }
    }

    async fn process(&self, kind: EventKind, body: serde_json::Value) -> firebreak_engine::Outcome {
        let decoded = decode(
            kind,
            &serde_json::to_vec(&body).unwrap(),
            t("2026-11-23T15:00:00Z"),
        )
        .unwrap();
        self.engine.process(&[decoded]).await.unwrap()
    }

    async fn incidents(&self) -> Vec<firebreak_store::IncidentRow> {
        self.store
            .list_incidents(&IncidentFilter {
                limit: 100,
                ..IncidentFilter::default()
            })
            .await
            .unwrap()
    }

    async fn timeline_kinds(&self, id: i64) -> Vec<String> {
        self.store
            .timeline(id, 1000, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Runs one async test body against each store.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { let h = super::Harness::new(super::Backend::Sqlite).await; super::$name(&h).await; h.finish().await; })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { let h = super::Harness::new(super::Backend::Postgres).await; super::$name(&h).await; h.finish().await; })*
        }
    };
}

contract!(
    alerts_open_one_incident_per_group,
    duplicates_change_nothing,
    resolves_after_quiet_period_and_reopens_on_refire,
    suspect_deploys_and_gates_attach,
    late_firing_never_overwrites_resolution,
    concurrent_processing_never_duplicates,
    deploy_and_incident_committed_side_by_side_still_meet,
    migrations_are_idempotent,
    one_open_incident_per_group_is_enforced,
    listing_filters_and_pages,
    logs_are_stored_once,
    resolved_alert_without_incident_is_kept_unplaced,
    actions_are_claimed_once_and_run_one_at_a_time_per_target,
    an_expired_lease_comes_back_in_doubt,
    audit_is_append_only,
    flags_remember_their_previous_state,
    postmortem_saves_are_conditional_on_the_revision,
    logs_stream_in_time_order_within_the_window,
    leases_are_renewed_fenced_and_taken_back,
    a_revert_holds_its_target_and_an_interrupted_one_comes_back,
    actions_are_listed_and_found,
    settings_are_shared_and_audited,
    slack_messages_are_claimed_once_and_threaded,
    incidents_resolve_by_hand_once,
    history_reads_back_what_was_stored,
    unknown_stored_values_are_errors_naming_row_and_column,
    a_builtin_kill_switch_sets_the_flag_and_records_its_state_at_once,
    tokens_users_and_sessions,
    flags_import_lock_and_note_evaluations,
    previous_state_is_noted_once_under_the_lease,
    rollouts_are_kept_run_by_run_with_their_events,
    causes_times_heads_and_insights_read_back,
    people_declare_acknowledge_and_update_incidents,
    action_items_change_once_and_leave_through_one_claimed_export,
    presence_is_shared_bounded_and_forgotten,
);

async fn postmortem_saves_are_conditional_on_the_revision(h: &Harness) {
    h.process(
        EventKind::Alert,
        webhook(&[TestAlert::firing("aaaa000000000001", "checkout")]),
    )
    .await;
    let id = h.incidents().await[0].id;
    assert!(
        h.store
            .incidents_needing_postmortem(10)
            .await
            .unwrap()
            .is_empty(),
        "open: no draft yet"
    );
    h.process(
        EventKind::Alert,
        webhook(&[
            TestAlert::firing("aaaa000000000001", "checkout").resolved("2026-11-23T14:10:00Z")
        ]),
    )
    .await;
    h.engine.sweep(t("2026-11-23T15:00:00Z")).await.unwrap();
    assert_eq!(
        h.store.incidents_needing_postmortem(10).await.unwrap(),
        vec![id]
    );
    let save = |expected: Option<i64>, text: &str, author: &str| PostmortemSave {
        incident_id: id,
        expected_revision: expected,
        markdown: text.into(),
        status: "draft".into(),
        generated: expected.is_none().then(|| text.to_string()),
        author: author.into(),
        kind: if expected.is_none() {
            "generated"
        } else {
            "edited"
        }
        .into(),
        at: Utc::now(),
    };
    let SaveOutcome::Saved(first) = h
        .store
        .save_postmortem(&save(None, "v1", "firebreak"))
        .await
        .unwrap()
    else {
        panic!("create")
    };
    assert_eq!(first.revision, 1);
    assert!(matches!(
        h.store
            .save_postmortem(&save(None, "again", "x"))
            .await
            .unwrap(),
        SaveOutcome::Stale(Some(_))
    ));
    assert!(h
        .store
        .incidents_needing_postmortem(10)
        .await
        .unwrap()
        .is_empty());
    let SaveOutcome::Saved(second) = h
        .store
        .save_postmortem(&save(Some(1), "v2", "alice"))
        .await
        .unwrap()
    else {
        panic!("edit")
    };
    assert_eq!(
        (second.revision, second.generated.as_str()),
        (2, "v1"),
        "an edit keeps the last render"
    );
    match h
        .store
        .save_postmortem(&save(Some(1), "stale", "bob"))
        .await
        .unwrap()
    {
        SaveOutcome::Stale(Some(cur)) => {
            assert_eq!((cur.revision, cur.markdown.as_str()), (2, "v2"))
        }
        other => panic!("{other:?}"),
    }
    let revs = h.store.postmortem_revisions(id).await.unwrap();
    let seen: Vec<(i64, &str, &str)> = revs
        .iter()
        .map(|r| (r.revision, r.author.as_str(), r.markdown.as_str()))
        .collect();
    assert_eq!(seen, [(1, "firebreak", "v1"), (2, "alice", "v2")]);
}

async fn logs_stream_in_time_order_within_the_window(h: &Harness) {
    let lines: Vec<serde_json::Value> = (0..50)
        .rev()
        .map(|i| json!({"at": format!("2026-11-23T14:{i:02}:00Z"), "message": format!("line {i}")}))
        .collect();
    h.process(
        EventKind::Log,
        json!({"service": "checkout", "environment": "prod", "lines": lines}),
    )
    .await;
    h.process(EventKind::Log, json!({"service": "payments", "lines": [{"at": "2026-11-23T14:10:00Z", "message": "other"}]})).await;
    let mut seen = Vec::new();
    let n = h
        .store
        .scan_logs(
            ServiceWindow {
                service: "checkout",
                environment: Some("prod"),
                from: t("2026-11-23T14:10:00Z"),
                to: t("2026-11-23T14:19:00Z"),
            },
            None,
            &mut |row| seen.push(row.message),
        )
        .await
        .unwrap();
    assert_eq!(n, 10);
    assert_eq!(seen.first().map(String::as_str), Some("line 10"));
    assert_eq!(seen.last().map(String::as_str), Some("line 19"));
}

const OWNER: &str = "node-a/1";

fn new_action(key: &str, target: &str) -> NewAction {
    NewAction {
        dedupe_key: key.into(),
        playbook: "pb".into(),
        playbook_version: "abc".into(),
        step_index: 0,
        kind: "kill_switch".into(),
        target: target.into(),
        incident_id: None,
        trigger_id: "al-1".into(),
        requested_by: "engine".into(),
        status: ActionStatus::Pending,
        reason: None,
        spec: ActionSpec {
            step: StepAction::KillSwitch(KillSwitchStep {
                flag: "f".into(),
                provider: "builtin".into(),
                environment: None,
                state: FlagState::Off,
            }),
            vars: Default::default(),
            describe: "turn off flag f (builtin)".into(),
            four_eyes: false,
        },
        at: Utc::now() - Duration::seconds(1),
    }
}

/// A built-in flag as the tests' tool `t` sets it.
fn flag_write<'a>(key: &'a str, enabled: bool, description: Option<&'a str>) -> FlagWrite<'a> {
    FlagWrite {
        key,
        enabled,
        description,
        by: "t",
    }
}

fn new_user<'a>(
    username: &'a str,
    password_hash: &'a str,
    role: firebreak_domain::access::Role,
) -> NewUser<'a> {
    NewUser {
        username,
        password_hash,
        role,
    }
}

/// An audit row of `event` at `at` (a store method that acts at its audit
/// row's time then acts at `at`).
fn audit_at(event: &str, at: DateTime<Utc>) -> NewAudit {
    NewAudit {
        at,
        ..audit_row(event)
    }
}

fn audit_row(event: &str) -> NewAudit {
    NewAudit {
        at: Utc::now(),
        actor: "test".into(),
        event: event.into(),
        action_id: None,
        incident_id: None,
        playbook: None,
        playbook_version: None,
        detail: json!({"k": "v"}),
    }
}

async fn actions_are_claimed_once_and_run_one_at_a_time_per_target(h: &Harness) {
    let mut tx = h.store.begin().await.unwrap();
    let first = tx
        .insert_actions(&[new_action("k1", "flag:x")])
        .await
        .unwrap();
    let again = tx
        .insert_actions(&[new_action("k1", "flag:x")])
        .await
        .unwrap();
    let other = tx
        .insert_actions(&[new_action("k2", "flag:x")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        again.is_empty(),
        "the same key claims nothing the second time"
    );
    assert_eq!(other.len(), 1);

    let now = Utc::now();
    let (a, in_doubt) = h
        .store
        .claim_action(now, now + Duration::minutes(1), OWNER)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.id, first[0].id);
    assert!(!in_doubt);
    assert_eq!(a.status, ActionStatus::Running);
    assert_eq!(a.attempts, 1);
    assert!(
        h.store
            .claim_action(now, now + Duration::minutes(1), OWNER)
            .await
            .unwrap()
            .is_none(),
        "one running action per target"
    );
    let done = h
        .store
        .transition_action(
            a.id,
            &[ActionStatus::Running],
            &ActionChange::to(ActionStatus::Succeeded, now),
            &[audit_row("executed")],
            &[],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, ActionStatus::Succeeded);
    assert!(done.lease_until.is_none());
    assert!(
        h.store
            .transition_action(
                a.id,
                &[ActionStatus::Held],
                &ActionChange::to(ActionStatus::Pending, now),
                &[audit_row("approved")],
                &[]
            )
            .await
            .unwrap()
            .is_none(),
        "a transition from the wrong status changes nothing"
    );
    let (b, _) = h
        .store
        .claim_action(now, now + Duration::minutes(1), OWNER)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.id, other[0].id);
    let audit = h
        .store
        .list_audit(&AuditFilter {
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1, "the refused transition wrote no audit row");
}

async fn an_expired_lease_comes_back_in_doubt(h: &Harness) {
    let mut tx = h.store.begin().await.unwrap();
    tx.insert_actions(&[new_action("k1", "flag:y")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let now = Utc::now();
    let (a, in_doubt) = h
        .store
        .claim_action(now, now - Duration::seconds(1), OWNER)
        .await
        .unwrap()
        .unwrap();
    assert!(!in_doubt);
    let (b, in_doubt) = h
        .store
        .claim_action(Utc::now(), Utc::now() + Duration::minutes(1), "node-b/2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.id, b.id);
    assert!(in_doubt, "a crashed executor's action is in doubt");
    assert_eq!(b.attempts, 2);
}

async fn audit_is_append_only(h: &Harness) {
    h.store.record(&[audit_row("flag_set")], &[]).await.unwrap();
    let (update, delete) = if h.url.starts_with("postgres") {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&h.url)
            .await
            .unwrap();
        (
            sqlx::query("UPDATE audit SET actor = 'mallory'")
                .execute(&mut c)
                .await
                .err(),
            sqlx::query("DELETE FROM audit").execute(&mut c).await.err(),
        )
    } else {
        let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&h.url)
            .await
            .unwrap();
        (
            sqlx::query("UPDATE audit SET actor = 'mallory'")
                .execute(&mut c)
                .await
                .err(),
            sqlx::query("DELETE FROM audit").execute(&mut c).await.err(),
        )
    };
    assert!(update.unwrap().to_string().contains("append-only"));
    assert!(delete.unwrap().to_string().contains("append-only"));
    if h.url.starts_with("postgres") {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&h.url)
            .await
            .unwrap();
        let truncate = sqlx::query("TRUNCATE audit").execute(&mut c).await.err();
        assert!(truncate.unwrap().to_string().contains("append-only"));
    }
    // Details as the database's JSON type keeps them (key order, numbers) still verify.
    let mut nested = audit_row("second");
    nested.detail =
        json!({"zeta": 1, "alpha": {"y": [1.5, "x", 0.1], "b": null, "é": "ü"}, "n": -3});
    h.store
        .record(&[nested, audit_row("third")], &[])
        .await
        .unwrap();
    let check = h.store.verify_audit().await.unwrap();
    assert_eq!(
        (check.verified, check.before_chain, check.broken),
        (3, 0, None)
    );
    let rows = h
        .store
        .list_audit(&AuditFilter {
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rows[0].entry.actor, "test");
}

async fn flags_remember_their_previous_state(h: &Harness) {
    let a = audit_row("flag_set");
    assert_eq!(
        h.store
            .set_flag(&flag_write("f", true, Some("desc")), &a)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        h.store
            .set_flag(&flag_write("f", false, None), &a)
            .await
            .unwrap(),
        Some(true)
    );
    let f = h.store.flag("f").await.unwrap();
    assert!(!f.enabled);
    assert_eq!(
        f.description.as_deref(),
        Some("desc"),
        "an update without a description keeps it"
    );
    assert!(matches!(h.store.flag("g").await, Err(StoreError::NotFound)));
    assert!(h.store.delete_flag("f", &a).await.unwrap());
    assert!(!h.store.delete_flag("f", &a).await.unwrap());
}

async fn alerts_open_one_incident_per_group(h: &Harness) {
    let body = webhook(&[
        TestAlert::firing("aaaa000000000001", "checkout"),
        TestAlert::firing("aaaa000000000002", "checkout"),
        TestAlert::firing("aaaa000000000003", "payments"),
    ]);
    let outcome = h.process(EventKind::Alert, body).await;
    assert_eq!(outcome.new[0], 3);
    assert_eq!(outcome.incidents_opened.len(), 2);
    let incidents = h.incidents().await;
    assert_eq!(incidents.len(), 2);
    let checkout = incidents
        .iter()
        .find(|i| i.service.as_deref() == Some("checkout"))
        .unwrap();
    assert_eq!(checkout.status, "open");
    assert_eq!(checkout.environment.as_deref(), Some("prod"));
    assert_eq!(
        checkout.opened_at,
        t("2026-11-23T14:02:00.123456Z"),
        "opened at the alert's own start"
    );
    let kinds = h.timeline_kinds(checkout.id).await;
    assert_eq!(kinds.iter().filter(|k| *k == "alert_firing").count(), 2);
    assert_eq!(kinds.iter().filter(|k| *k == "incident_opened").count(), 1);
    let detail = h.store.incident(checkout.id).await.unwrap();
    assert_eq!(detail.alerts.len(), 2);
    // The alerts panel: one group per name, counted.
    let groups = h.store.alert_groups(checkout.id).await.unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!((groups[0].count, groups[0].firing), (2, 2));
    assert_eq!(groups[0].alertname, detail.alerts[0].alertname);
    // The overview counts the alerts instead of listing them.
    let o = h.store.incident_overview(checkout.id).await.unwrap();
    assert_eq!((o.alert_count, o.alerts_firing), (2, 2));
    assert_eq!(
        o.first_alert,
        detail.alerts.iter().map(|a| a.starts_at).min()
    );
    assert_eq!(
        (&o.incident, &o.changes, &o.gates, o.timeline_entries),
        (
            &detail.incident,
            &detail.changes,
            &detail.gates,
            detail.timeline_entries
        )
    );
}

async fn duplicates_change_nothing(h: &Harness) {
    let body = webhook(&[TestAlert::firing("bbbb000000000001", "checkout")]);
    h.process(EventKind::Alert, body.clone()).await;
    let counts = h.store.event_counts().await.unwrap();
    let id = h.incidents().await[0].id;
    let timeline = h.store.timeline(id, 1000, 0).await.unwrap();

    // The same body again, and twice within one batch (an HA pair's duplicates).
    let again = h.process(EventKind::Alert, body.clone()).await;
    assert_eq!(again.new[0], 0);
    assert_eq!(again.duplicates[0], 1);
    let decoded = decode(
        EventKind::Alert,
        &serde_json::to_vec(&body).unwrap(),
        Utc::now(),
    )
    .unwrap();
    let twice = h.engine.process(&[decoded.clone(), decoded]).await.unwrap();
    assert_eq!(twice.new[0], 0);
    assert_eq!(twice.duplicates[0], 2);

    let deploy =
        json!({"service": "checkout", "version": "v9", "started_at": "2026-11-23T14:00:00Z"});
    h.process(EventKind::Deploy, deploy.clone()).await;
    let dup = h.process(EventKind::Deploy, deploy).await;
    assert_eq!(dup.new[1], 0);

    assert_eq!(h.store.event_counts().await.unwrap(), [counts[0], 1, 0, 0]);
    assert_eq!(h.incidents().await.len(), 1);
    let after = h.store.timeline(id, 1000, 0).await.unwrap();
    assert_eq!(
        after.len(),
        timeline.len() + 1,
        "only the new deploy was added"
    );
}

async fn resolves_after_quiet_period_and_reopens_on_refire(h: &Harness) {
    h.process(
        EventKind::Alert,
        webhook(&[TestAlert::firing("cccc000000000001", "checkout")]),
    )
    .await;
    let id = h.incidents().await[0].id;
    assert!(
        h.engine.sweep(Utc::now()).await.unwrap().is_empty(),
        "a firing alert keeps the incident open"
    );

    let resolved =
        TestAlert::firing("cccc000000000001", "checkout").resolved("2026-11-23T14:20:00Z");
    h.process(EventKind::Alert, webhook(&[resolved])).await;
    // Judged before the last alert's end, nothing resolves; after it, the incident does.
    assert!(h
        .engine
        .sweep(t("2026-11-23T14:19:00Z"))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        h.engine.sweep(t("2026-11-23T14:21:00Z")).await.unwrap(),
        vec![id]
    );
    assert!(
        h.engine
            .sweep(t("2026-11-23T14:22:00Z"))
            .await
            .unwrap()
            .is_empty(),
        "resolving is idempotent"
    );
    let incident = h.store.incident(id).await.unwrap().incident;
    assert_eq!(incident.status, "resolved");
    assert_eq!(
        incident.resolved_at,
        Some(t("2026-11-23T14:20:00Z")),
        "resolved at the last alert's end"
    );

    // The same alert fires again 10 minutes later: the incident reopens.
    let mut refire = TestAlert::firing("cccc000000000001", "checkout");
    refire.starts_at = "2026-11-23T14:30:00Z";
    let outcome = h.process(EventKind::Alert, webhook(&[refire])).await;
    assert_eq!(outcome.incidents_reopened, vec![id]);
    assert!(outcome.incidents_opened.is_empty());
    assert_eq!(
        h.incidents().await.len(),
        1,
        "flapping does not make new incidents"
    );
    assert_eq!(h.store.incident(id).await.unwrap().incident.status, "open");
    let kinds = h.timeline_kinds(id).await;
    assert_eq!(
        kinds,
        vec![
            "alert_firing",
            "incident_opened",
            "alert_resolved",
            "incident_resolved",
            "alert_firing",
            "incident_reopened"
        ]
    );

    // Far outside the reopen window a new incident opens instead.
    let resolved = TestAlert {
        starts_at: "2026-11-23T14:30:00Z",
        ..TestAlert::firing("cccc000000000001", "checkout")
    }
    .resolved("2026-11-23T14:40:00Z");
    h.process(EventKind::Alert, webhook(&[resolved])).await;
    h.engine.sweep(t("2026-11-23T14:41:00Z")).await.unwrap();
    let mut later = TestAlert::firing("cccc000000000001", "checkout");
    later.starts_at = "2026-11-23T18:00:00Z";
    let outcome = h.process(EventKind::Alert, webhook(&[later])).await;
    assert_eq!(outcome.incidents_opened.len(), 1);
    assert_ne!(outcome.incidents_opened[0], id);
}

async fn suspect_deploys_and_gates_attach(h: &Harness) {
    // Long before: not a suspect. 13:55: the suspect. Another service: unrelated.
    h.process(
        EventKind::Deploy,
        json!([
            {"id": "old", "service": "checkout", "environment": "prod", "version": "v1", "started_at": "2026-11-23T09:00:00Z"},
            {"id": "suspect", "service": "checkout", "environment": "prod", "version": "v2", "previous_version": "v1",
             "started_at": "2026-11-23T13:55:00Z", "strategy": "canary", "actor": "ci"},
            {"id": "other", "service": "search", "environment": "prod", "version": "v7", "started_at": "2026-11-23T13:56:00Z"}
        ]),
    )
    .await;
    h.process(
        EventKind::Gate,
        json!({"service": "checkout", "environment": "prod", "version": "v2", "gate": "error-rate", "metric": "http_5xx_ratio",
               "comparison": "<=", "threshold": 0.01, "observed": 0.07, "verdict": "fail", "step": 2,
               "evaluated_at": "2026-11-23T13:58:00Z"}),
    )
    .await;
    h.process(
        EventKind::Alert,
        webhook(&[TestAlert::firing("dddd000000000001", "checkout")]),
    )
    .await;
    let id = h.incidents().await[0].id;
    let detail = h.store.incident(id).await.unwrap();
    assert_eq!(
        detail
            .changes
            .iter()
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>(),
        vec!["suspect"]
    );
    assert_eq!(detail.changes[0].actor.as_deref(), Some("ci"));
    assert_eq!(detail.gates.len(), 1);
    assert_eq!(detail.gates[0].observed, Some(0.07));
    assert_eq!(detail.gates[0].step.as_deref(), Some("2"));

    // While the incident is open, a rollback deploy and a gate on it arrive.
    h.process(
        EventKind::Deploy,
        json!({"id": "rollback", "service": "checkout", "environment": "prod", "version": "v1", "status": "rolled_back",
               "started_at": "2026-11-23T14:10:00Z"}),
    )
    .await;
    h.process(
        EventKind::Gate,
        json!({"service": "checkout", "environment": "prod", "deploy_id": "rollback", "gate": "error-rate", "verdict": "pass",
               "evaluated_at": "2026-11-23T14:15:00Z"}),
    )
    .await;
    let detail = h.store.incident(id).await.unwrap();
    assert_eq!(detail.changes.len(), 2);
    assert_eq!(detail.gates.len(), 2);
    let timeline = h.store.timeline(id, 1000, 0).await.unwrap();
    let kinds: Vec<&str> = timeline.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "deploy",
            "gate",
            "alert_firing",
            "incident_opened",
            "deploy",
            "gate"
        ],
        "in event time order"
    );
    assert!(
        timeline[0].summary.contains("checkout v2"),
        "{}",
        timeline[0].summary
    );
    assert!(timeline.windows(2).all(|w| w[0].at <= w[1].at));
}

async fn late_firing_never_overwrites_resolution(h: &Harness) {
    let firing = TestAlert::firing("eeee000000000001", "checkout");
    let resolved =
        TestAlert::firing("eeee000000000001", "checkout").resolved("2026-11-23T14:05:00Z");
    h.process(EventKind::Alert, webhook(&[firing])).await;
    h.process(EventKind::Alert, webhook(&[resolved])).await;
    // A stale firing notification (an earlier start, delayed in some queue) arrives
    // after the resolution: it is recorded, but must not flip the alert back.
    let mut stale = TestAlert::firing("eeee000000000001", "checkout");
    stale.starts_at = "2026-11-23T13:50:00Z";
    let outcome = h.process(EventKind::Alert, webhook(&[stale])).await;
    assert_eq!(outcome.new[0], 1);
    let id = h.incidents().await[0].id;
    let detail = h.store.incident(id).await.unwrap();
    assert_eq!(detail.alerts.len(), 1);
    assert_eq!(detail.alerts[0].status, "resolved");
    assert_eq!(detail.alerts[0].starts_at, t("2026-11-23T14:02:00.123456Z"));
}

async fn concurrent_processing_never_duplicates(h: &Harness) {
    let alerts: Vec<TestAlert> = (0..50)
        .map(|i| TestAlert::firing(format!("ffff{i:012}"), "checkout"))
        .collect();
    let body = serde_json::to_vec(&webhook(&alerts)).unwrap();
    let decoded: Decoded = decode(EventKind::Alert, &body, Utc::now()).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let engine = h.engine.clone();
        let decoded = decoded.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match engine.process(std::slice::from_ref(&decoded)).await {
                    Ok(o) => return o,
                    Err(e) if e.is_transient() => {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    let mut new_total = 0;
    let mut opened = 0;
    for t in tasks {
        let o = t.await.unwrap();
        new_total += o.new[0];
        opened += o.incidents_opened.len();
    }
    assert_eq!(
        new_total, 50,
        "each alert counted once across concurrent engines"
    );
    assert_eq!(opened, 1);
    let incidents = h.incidents().await;
    assert_eq!(incidents.len(), 1);
    let kinds = h.timeline_kinds(incidents[0].id).await;
    assert_eq!(kinds.len(), 51);
}

/// A deploy and the first alert of its incident processed by two engines at
/// the same moment: whichever commits second must still see the other, so the
/// deploy is a suspect every time.
async fn deploy_and_incident_committed_side_by_side_still_meet(h: &Harness) {
    for round in 0..20 {
        let service = format!("race{round}");
        let alert = [TestAlert::firing(format!("aaaa{round:012}"), &service)];
        let alert = decode(
            EventKind::Alert,
            &serde_json::to_vec(&webhook(&alert)).unwrap(),
            Utc::now(),
        )
        .unwrap();
        let deploy =
            json!({"service": service, "version": "v2", "started_at": "2026-11-23T13:55:00Z"});
        let deploy = decode(
            EventKind::Deploy,
            &serde_json::to_vec(&deploy).unwrap(),
            Utc::now(),
        )
        .unwrap();
        let tasks: Vec<_> = [alert, deploy]
            .into_iter()
            .map(|decoded| {
                let engine = h.engine.clone();
                tokio::spawn(async move {
                    loop {
                        match engine.process(std::slice::from_ref(&decoded)).await {
                            Ok(_) => return,
                            Err(e) if e.is_transient() => {
                                tokio::time::sleep(std::time::Duration::from_millis(5)).await
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let incident = h
            .incidents()
            .await
            .into_iter()
            .find(|i| i.service.as_deref() == Some(service.as_str()))
            .unwrap();
        let detail = h.store.incident(incident.id).await.unwrap();
        assert_eq!(
            detail.changes.len(),
            1,
            "round {round}: the deploy must be a suspect of the incident"
        );
    }
}

async fn migrations_are_idempotent(h: &Harness) {
    h.store.migrate().await.unwrap();
    h.store.migrate().await.unwrap();
    h.store.ping().await.unwrap();
}

async fn one_open_incident_per_group_is_enforced(h: &Harness) {
    let new = NewIncident {
        group: GroupKey {
            key: "service=x,env=prod".into(),
            service: Some("x".into()),
            environment: Some("prod".into()),
        },
        title: "t".into(),
        severity: None,
        opened_at: Utc::now(),
    };
    let mut tx = h.store.begin().await.unwrap();
    tx.open_incidents(std::slice::from_ref(&new)).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = h.store.begin().await.unwrap();
    let second = tx.open_incidents(std::slice::from_ref(&new)).await;
    assert!(matches!(second, Err(StoreError::Conflict(_))), "{second:?}");
}

async fn listing_filters_and_pages(h: &Harness) {
    for service in ["a", "b", "c", "d", "e"] {
        h.process(
            EventKind::Alert,
            webhook(&[TestAlert::firing(
                format!("{service}000000000000001"),
                service,
            )]),
        )
        .await;
    }
    let page1 = h
        .store
        .list_incidents(&IncidentFilter {
            limit: 2,
            ..IncidentFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page1.len(), 2);
    assert!(page1[0].id > page1[1].id, "newest first");
    let page2 = h
        .store
        .list_incidents(&IncidentFilter {
            limit: 10,
            before_id: Some(page1[1].id),
            ..IncidentFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page2.len(), 3);
    let only_c = h
        .store
        .list_incidents(&IncidentFilter {
            limit: 10,
            service: Some("c".into()),
            ..IncidentFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(only_c.len(), 1);
    let resolved = h
        .store
        .list_incidents(&IncidentFilter {
            limit: 10,
            status: Some("resolved".into()),
            ..IncidentFilter::default()
        })
        .await
        .unwrap();
    assert!(resolved.is_empty());
    assert!(matches!(
        h.store.incident(9_999_999).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        h.store.incident_overview(9_999_999).await,
        Err(StoreError::NotFound)
    ));
}

async fn logs_are_stored_once(h: &Harness) {
    let loki = json!({"streams": [{"stream": {"service": "checkout", "env": "prod"},
        "values": [["1763906520000000000", "GET /pay 500 upstream timeout after 3000ms"],
                   ["1763906520000000001", "GET /pay 200 in 31ms"]]}]});
    let first = h.process(EventKind::Log, loki.clone()).await;
    assert_eq!(first.new[3], 2);
    let again = h.process(EventKind::Log, loki).await;
    assert_eq!(again.new[3], 0);
    assert_eq!(again.duplicates[3], 2);
    assert_eq!(h.store.event_counts().await.unwrap()[3], 2);
}

async fn resolved_alert_without_incident_is_kept_unplaced(h: &Harness) {
    let resolved =
        TestAlert::firing("9999000000000001", "checkout").resolved("2026-11-23T14:05:00Z");
    let outcome = h.process(EventKind::Alert, webhook(&[resolved])).await;
    assert_eq!(outcome.new[0], 1, "the event is kept");
    assert!(
        outcome.incidents_opened.is_empty(),
        "a resolution alone opens nothing"
    );
    assert!(h.incidents().await.is_empty());
}

/// Runs raw SQL against the harness's database (to plant what an older or
/// foreign writer might have left).
async fn raw(h: &Harness, sql: &str) {
    if h.url.starts_with("postgres") {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&h.url)
            .await
            .unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&h.url)
            .await
            .unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
}

async fn leases_are_renewed_fenced_and_taken_back(h: &Harness) {
    let mut tx = h.store.begin().await.unwrap();
    tx.insert_actions(&[new_action("k1", "flag:builtin::f")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let now = Utc::now();
    let (a, _) = h
        .store
        .claim_action(now, now + Duration::seconds(10), OWNER)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.lease_owner.as_deref(), Some(OWNER));
    let later = now + Duration::minutes(5);
    assert!(h.store.renew_lease(a.id, OWNER, later).await.unwrap());
    assert!(
        !h.store.renew_lease(a.id, "node-b/9", later).await.unwrap(),
        "only the holder renews"
    );
    assert_eq!(
        h.store
            .action(a.id)
            .await
            .unwrap()
            .lease_until
            .map(|t| t.timestamp_micros()),
        Some(later.timestamp_micros())
    );
    // The state before acting is recorded once, and only by the holder.
    let before = json!({"flag": "f", "enabled": true});
    assert!(!h
        .store
        .record_previous_state(a.id, "node-b/9", &json!({"enabled": false}))
        .await
        .unwrap());
    assert!(h
        .store
        .record_previous_state(a.id, OWNER, &before)
        .await
        .unwrap());
    assert!(h
        .store
        .record_previous_state(a.id, OWNER, &json!({"enabled": false}))
        .await
        .unwrap());
    assert_eq!(
        h.store.action(a.id).await.unwrap().previous_state,
        Some(before),
        "the first recorded state is kept"
    );
    // A restart of node-a takes back its earlier instance's lease at once,
    // and leaves other nodes' leases alone.
    let mut tx = h.store.begin().await.unwrap();
    tx.insert_actions(&[new_action("k2", "flag:builtin::g")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (other, _) = h
        .store
        .claim_action(Utc::now(), later, "node-b/2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        h.store
            .expire_leases("node-a/", "node-a/3", Utc::now())
            .await
            .unwrap(),
        1
    );
    let (again, in_doubt) = h
        .store
        .claim_action(Utc::now(), later, "node-a/3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.id, in_doubt), (a.id, true));
    assert_eq!(again.lease_owner.as_deref(), Some("node-a/3"));
    assert_eq!(
        h.store
            .action(other.id)
            .await
            .unwrap()
            .lease_owner
            .as_deref(),
        Some("node-b/2")
    );
    // The old holder's late outcome is refused: the new holder decides.
    let late = ActionChange {
        held_by: Some(OWNER.into()),
        ..ActionChange::to(ActionStatus::Succeeded, Utc::now())
    };
    assert!(h
        .store
        .transition_action(
            a.id,
            &[ActionStatus::Running],
            &late,
            &[audit_row("executed")],
            &[]
        )
        .await
        .unwrap()
        .is_none());
    let ours = ActionChange {
        held_by: Some("node-a/3".into()),
        ..ActionChange::to(ActionStatus::Succeeded, Utc::now())
    };
    let done = h
        .store
        .transition_action(a.id, &[ActionStatus::Running], &ours, &[], &[])
        .await
        .unwrap()
        .unwrap();
    assert!(done.lease_until.is_none() && done.lease_owner.is_none());
}

async fn a_revert_holds_its_target_and_an_interrupted_one_comes_back(h: &Harness) {
    let mut tx = h.store.begin().await.unwrap();
    let a = tx
        .insert_actions(&[new_action("k1", "flag:builtin::f")])
        .await
        .unwrap()
        .remove(0);
    tx.commit().await.unwrap();
    let now = Utc::now();
    h.store
        .claim_action(now, now + Duration::minutes(1), OWNER)
        .await
        .unwrap();
    h.store
        .transition_action(
            a.id,
            &[ActionStatus::Running],
            &ActionChange::to(ActionStatus::Succeeded, now),
            &[],
            &[],
        )
        .await
        .unwrap()
        .unwrap();
    // succeeded -> reverting, under a lease that then runs out (the process died).
    let reverting = ActionChange {
        lease: Some((Utc::now() - Duration::seconds(1), OWNER.into())),
        ..ActionChange::to(ActionStatus::Reverting, Utc::now())
    };
    let r = h
        .store
        .transition_action(a.id, &[ActionStatus::Succeeded], &reverting, &[], &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, ActionStatus::Reverting);
    assert_eq!(r.lease_owner.as_deref(), Some(OWNER));
    // While it holds the target, nothing else on the target may run...
    let mut tx = h.store.begin().await.unwrap();
    tx.insert_actions(&[new_action("k2", "flag:builtin::f")])
        .await
        .unwrap();
    assert_eq!(
        tx.open_actions_on("flag:builtin::f").await.unwrap().len(),
        2
    );
    // The actions on the target that acted or will, newest first, as many
    // as asked for; one that did nothing is not among them.
    let mut quiet = new_action("k3", "flag:builtin::f");
    quiet.status = ActionStatus::Suppressed;
    tx.insert_actions(&[quiet]).await.unwrap();
    let acting = tx.acting_actions_on("flag:builtin::f", 10).await.unwrap();
    assert_eq!(acting.len(), 2, "{acting:?}");
    assert!(acting[0].id > acting[1].id, "{acting:?}");
    assert!(acting.iter().all(|a| a.status != ActionStatus::Suppressed));
    assert_eq!(
        tx.acting_actions_on("flag:builtin::f", 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(tx
        .acting_actions_on("flag:builtin::other", 10)
        .await
        .unwrap()
        .is_empty());
    tx.commit().await.unwrap();
    // ...and once its lease is gone it is claimed again, still reverting, in doubt.
    let (back, in_doubt) = h
        .store
        .claim_action(Utc::now(), Utc::now() + Duration::minutes(1), "node-b/1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (back.id, back.status, in_doubt),
        (a.id, ActionStatus::Reverting, true)
    );
    assert!(
        h.store
            .claim_action(Utc::now(), Utc::now() + Duration::minutes(1), "node-b/1")
            .await
            .unwrap()
            .is_none(),
        "the pending action waits for the revert"
    );
    h.store
        .transition_action(
            a.id,
            &[ActionStatus::Reverting],
            &ActionChange::to(ActionStatus::Reverted, Utc::now()),
            &[],
            &[],
        )
        .await
        .unwrap()
        .unwrap();
    let (next, _) = h
        .store
        .claim_action(Utc::now(), Utc::now() + Duration::minutes(1), "node-b/1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next.dedupe_key, "k2",
        "the target accepts new actions after the revert"
    );
}

async fn actions_are_listed_and_found(h: &Harness) {
    h.process(
        EventKind::Deploy,
        json!({"service": "checkout", "version": "v2", "started_at": "2026-11-23T13:55:00Z",
               "flags": ["checkout.new-flow"]}),
    )
    .await;
    h.process(
        EventKind::Alert,
        webhook(&[TestAlert::firing("cccc000000000001", "checkout")]),
    )
    .await;
    let incident = h.incidents().await[0].id;
    let mut tx = h.store.begin().await.unwrap();
    let mut held = new_action("k1", "flag:builtin::f");
    held.status = ActionStatus::Held;
    held.incident_id = Some(incident);
    held.requested_by = "api:alice".into();
    let rows = tx
        .insert_actions(&[held, new_action("k2", "flag:builtin::g")])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let since = tx
        .actions_created_since(Utc::now() - Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(since.len(), 2);
    let with_flag = tx
        .open_incidents_with_flag("checkout.new-flow")
        .await
        .unwrap();
    assert_eq!(
        with_flag.iter().map(|i| i.id).collect::<Vec<_>>(),
        [incident]
    );
    assert!(tx
        .open_incidents_with_flag("other")
        .await
        .unwrap()
        .is_empty());
    tx.insert_audit(&[audit_row("requested")]).await.unwrap();
    assert_eq!(tx.tx_setting("nothing").await.unwrap(), None);
    tx.commit().await.unwrap();
    let held = h
        .store
        .list_actions(&ActionFilter {
            status: Some(ActionStatus::Held),
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].requested_by, "api:alice");
    assert_eq!(held[0].spec.describe, "turn off flag f (builtin)");
    let of_incident = h
        .store
        .list_actions(&ActionFilter {
            incident_id: Some(incident),
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(of_incident.len(), 1);
    let page = h
        .store
        .list_actions(&ActionFilter {
            before_id: Some(rows[1].id),
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.iter().map(|a| a.id).collect::<Vec<_>>(), [rows[0].id]);
    let created_since = |since| ActionFilter {
        since: Some(since),
        limit: 10,
        ..ActionFilter::default()
    };
    let recent = h
        .store
        .list_actions(&created_since(Utc::now() - Duration::minutes(1)))
        .await
        .unwrap();
    assert_eq!(recent.len(), 2, "both were created a moment ago");
    let later = h
        .store
        .list_actions(&created_since(Utc::now() + Duration::minutes(1)))
        .await
        .unwrap();
    assert!(later.is_empty(), "none was created in the future");
    // Every audit filter narrows on its own, and together they intersect.
    h.store
        .record(
            &[
                NewAudit {
                    actor: "api:alice".into(),
                    ..audit_row("approved")
                },
                NewAudit {
                    actor: "api:bob".into(),
                    incident_id: Some(incident),
                    ..audit_row("approved")
                },
                NewAudit {
                    actor: "api:bob".into(),
                    ..audit_row("denied")
                },
            ],
            &[],
        )
        .await
        .unwrap();
    let audit = |actor: Option<&str>, event: Option<&str>, incident_id: Option<i64>| {
        let filter = AuditFilter {
            actor: actor.map(str::to_string),
            event: event.map(str::to_string),
            incident_id,
            limit: 10,
            ..AuditFilter::default()
        };
        async move {
            let rows = h.store.list_audit(&filter).await.unwrap();
            rows.into_iter()
                .map(|r| format!("{} {}", r.entry.actor, r.entry.event))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        audit(Some("api:bob"), None, None).await,
        ["api:bob denied", "api:bob approved"]
    );
    assert_eq!(
        audit(None, Some("approved"), None).await,
        ["api:bob approved", "api:alice approved"]
    );
    assert_eq!(
        audit(Some("api:alice"), Some("approved"), None).await,
        ["api:alice approved"]
    );
    assert_eq!(
        audit(None, None, Some(incident)).await,
        ["api:bob approved"]
    );
    assert_eq!(h.store.action(rows[1].id).await.unwrap().dedupe_key, "k2");
    assert!(matches!(
        h.store.action(999_999).await,
        Err(StoreError::NotFound)
    ));
}

async fn settings_are_shared_and_audited(h: &Harness) {
    assert_eq!(h.store.setting("automation_paused").await.unwrap(), None);
    let mut a = audit_row("automation_paused");
    a.actor = "api:bob".into();
    h.store
        .set_setting("automation_paused", "true", &a)
        .await
        .unwrap();
    assert_eq!(
        h.store
            .setting("automation_paused")
            .await
            .unwrap()
            .as_deref(),
        Some("true")
    );
    let mut tx = h.store.begin().await.unwrap();
    assert_eq!(
        tx.tx_setting("automation_paused").await.unwrap().as_deref(),
        Some("true")
    );
    drop(tx);
    h.store.put_setting("cursor", "41").await.unwrap();
    h.store.put_setting("cursor", "42").await.unwrap();
    assert_eq!(
        h.store.setting("cursor").await.unwrap().as_deref(),
        Some("42")
    );
    let audit = h
        .store
        .list_audit(&AuditFilter {
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1, "a bookkeeping setting writes no audit row");
    assert_eq!(audit[0].entry.actor, "api:bob");
    assert_eq!(h.store.list_flags().await.unwrap().len(), 0);
    h.store
        .set_flag(&flag_write("a", true, None), &audit_row("flag_set"))
        .await
        .unwrap();
    h.store
        .set_flag(&flag_write("b", false, None), &audit_row("flag_set"))
        .await
        .unwrap();
    let flags = h.store.list_flags().await.unwrap();
    assert_eq!(
        flags
            .iter()
            .map(|f| (f.key.as_str(), f.enabled))
            .collect::<Vec<_>>(),
        [("a", true), ("b", false)]
    );
}

async fn slack_messages_are_claimed_once_and_threaded(h: &Harness) {
    h.process(
        EventKind::Alert,
        webhook(&[TestAlert::firing("dddd000000000001", "checkout")]),
    )
    .await;
    let incident = h.incidents().await[0].id;
    let events = h
        .store
        .timeline_since(0, &["incident_opened", "incident_resolved"], 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].incident_id, events[0].kind.as_str()),
        (incident, "incident_opened")
    );
    assert!(h
        .store
        .timeline_since(events[0].seq, &["incident_opened"], 10)
        .await
        .unwrap()
        .is_empty());
    let seq = events[0].seq;
    let lease = chrono::Duration::seconds(30);
    let claim = |at: chrono::DateTime<Utc>| {
        let stale_before = at - lease;
        h.store
            .claim_slack_message(seq, incident, OutboxClaim { at, stale_before })
    };
    let t0 = Utc::now();
    assert_eq!(claim(t0).await.unwrap(), SlackClaim::Ours);
    assert_eq!(
        claim(t0 + chrono::Duration::seconds(5)).await.unwrap(),
        SlackClaim::InFlight,
        "claimed once: a second claimer waits while the first posts"
    );
    // The claimer stopped before it posted: once the lease is past, the
    // announcement is taken over (the outbox posts it after a crash).
    assert_eq!(
        claim(t0 + chrono::Duration::seconds(31)).await.unwrap(),
        SlackClaim::Ours
    );
    assert_eq!(
        claim(t0 + chrono::Duration::seconds(40)).await.unwrap(),
        SlackClaim::InFlight,
        "the takeover renewed the claim"
    );
    h.store.release_slack_message(seq).await.unwrap();
    assert_eq!(claim(Utc::now()).await.unwrap(), SlackClaim::Ours);
    assert_eq!(h.store.slack_thread(incident).await.unwrap(), None);
    h.store
        .slack_message_posted(seq, "C1", "1700000000.000100")
        .await
        .unwrap();
    h.store.release_slack_message(seq).await.unwrap();
    assert_eq!(
        h.store.slack_thread(incident).await.unwrap(),
        Some(("C1".into(), "1700000000.000100".into())),
        "a posted message is never released"
    );
    assert_eq!(
        claim(Utc::now() + chrono::Duration::hours(1))
            .await
            .unwrap(),
        SlackClaim::Posted,
        "a posted message is never taken over"
    );
}

async fn incidents_resolve_by_hand_once(h: &Harness) {
    h.process(
        EventKind::Alert,
        webhook(&[TestAlert::firing("eeee000000000001", "checkout")]),
    )
    .await;
    let id = h.incidents().await[0].id;
    let entry = firebreak_domain::timeline::NewEntry {
        incident_id: id,
        at: Utc::now(),
        kind: "incident_resolved",
        source: "slack:U1".into(),
        summary: "resolved by hand".into(),
        ref_id: "resolved-by:U1".into(),
    };
    assert!(h
        .store
        .resolve_incident_manually(id, &audit_row("resolved"), std::slice::from_ref(&entry))
        .await
        .unwrap());
    assert!(!h
        .store
        .resolve_incident_manually(id, &audit_row("resolved"), &[entry])
        .await
        .unwrap());
    let detail = h.store.incident(id).await.unwrap();
    assert_eq!(detail.incident.status, "resolved");
    assert!(h
        .timeline_kinds(id)
        .await
        .contains(&"incident_resolved".to_string()));
    assert_eq!(
        h.store.backend(),
        if h.url.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        }
    );
    h.store.ping().await.unwrap();
}

async fn history_reads_back_what_was_stored(h: &Harness) {
    h.process(
        EventKind::Deploy,
        json!({"service": "checkout", "environment": "prod", "version": "v2", "strategy": "blue-green",
               "started_at": "2026-11-23T13:55:00Z", "flags": ["a", "b"]}),
    )
    .await;
    h.process(
        EventKind::Gate,
        json!({"service": "checkout", "version": "v2", "gate": "errors", "verdict": "fail",
               "threshold": 1, "observed": 0.5, "evaluated_at": "2026-11-23T13:58:00Z"}),
    )
    .await;
    h.process(
        EventKind::Alert,
        webhook(&[TestAlert::firing("ffff000000000001", "checkout")]),
    )
    .await;
    let history = h
        .store
        .history_since(t("2026-11-23T13:00:00Z"))
        .await
        .unwrap();
    assert_eq!(history.alerts.len(), 1);
    assert!(
        history.alerts[0].0.is_some(),
        "the alert knows its incident"
    );
    assert_eq!(history.alerts[0].1.labels["service"], "checkout");
    assert_eq!(history.deploys.len(), 1);
    let d = &history.deploys[0];
    assert_eq!(d.flags, ["a", "b"]);
    assert_eq!(
        d.strategy,
        Some(firebreak_domain::DeployStrategy::BlueGreen)
    );
    assert_eq!(history.gates.len(), 1);
    assert_eq!(
        history.gates[0].threshold,
        Some(1.0),
        "a whole number reads back as a number"
    );
    assert_eq!(
        history.gates[0].verdict,
        firebreak_domain::GateVerdict::Fail
    );
    let counts = h.store.event_counts().await.unwrap();
    assert_eq!(counts, [1, 1, 1, 0]);
}

async fn unknown_stored_values_are_errors_naming_row_and_column(h: &Harness) {
    h.process(
        EventKind::Deploy,
        json!({"id": "dep-1", "service": "checkout", "version": "v2", "started_at": "2026-11-23T13:55:00Z"}),
    )
    .await;
    raw(
        h,
        "UPDATE deploys SET status = 'exploded' WHERE id = 'dep-1'",
    )
    .await;
    let err = h
        .store
        .history_since(t("2026-11-23T13:00:00Z"))
        .await
        .expect_err("an unknown deploy status is an error, not a success");
    let m = err.to_string();
    assert!(matches!(err, StoreError::Corrupt(_)), "{m}");
    assert!(
        m.contains("deploys")
            && m.contains("dep-1")
            && m.contains("status")
            && m.contains("exploded"),
        "{m}"
    );
    // The engine's lookups refuse it too: a rollback never picks it as "last good".
    let mut tx = h.store.begin().await.unwrap();
    assert!(matches!(
        tx.deploys_between(ServiceWindow {
            service: "checkout",
            environment: None,
            from: t("2026-11-23T00:00:00Z"),
            to: t("2026-11-24T00:00:00Z"),
        })
        .await,
        Err(StoreError::Corrupt(_))
    ));
    drop(tx);
    raw(
        h,
        "UPDATE deploys SET status = 'succeeded' WHERE id = 'dep-1'",
    )
    .await;
    h.process(
        EventKind::Gate,
        json!({"id": "gate-1", "service": "checkout", "gate": "errors", "verdict": "pass",
               "evaluated_at": "2026-11-23T13:58:00Z"}),
    )
    .await;
    raw(
        h,
        "UPDATE gate_results SET verdict = 'maybe' WHERE id = 'gate-1'",
    )
    .await;
    let m = h
        .store
        .history_since(t("2026-11-23T13:00:00Z"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("gate_results") && m.contains("verdict") && m.contains("maybe"),
        "{m}"
    );
    if !h.url.starts_with("postgres") {
        // SQLite keeps times as integers: one out of range is named, not read as 1970.
        raw(h, "UPDATE gate_results SET verdict = 'pass', evaluated_at = 9223372036854775807 WHERE id = 'gate-1'").await;
        let m = h
            .store
            .history_since(t("2026-11-23T13:00:00Z"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("evaluated_at") && m.contains("not a time"),
            "{m}"
        );
    }
}

async fn a_builtin_kill_switch_sets_the_flag_and_records_its_state_at_once(h: &Harness) {
    h.store
        .set_flag(&flag_write("f", true, None), &audit_row("flag_set"))
        .await
        .unwrap();
    let mut tx = h.store.begin().await.unwrap();
    tx.insert_actions(&[new_action("k1", "flag:builtin::f")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let now = Utc::now();
    let (a, _) = h
        .store
        .claim_action(now, now + Duration::minutes(1), OWNER)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        h.store
            .set_flag_for_action(
                &flag_write("f", false, None),
                &audit_row("flag_set"),
                (a.id, "node-b/1")
            )
            .await
            .unwrap(),
        None,
        "not the lease holder: nothing written"
    );
    assert!(h.store.flag("f").await.unwrap().enabled);
    assert_eq!(
        h.store
            .set_flag_for_action(
                &flag_write("f", false, None),
                &audit_row("flag_set"),
                (a.id, OWNER)
            )
            .await
            .unwrap(),
        Some(Some(true))
    );
    assert!(!h.store.flag("f").await.unwrap().enabled);
    assert_eq!(
        h.store.action(a.id).await.unwrap().previous_enabled(),
        Some(true)
    );
}

// ---------------------------------------------------------------------------
// One case per concern for the methods the cases above reach only through the
// engine or not at all. The batch writes (`BatchTx`: alerts, incidents,
// deploys, gates, logs, timeline entries, resolution) are the engine's and
// are covered through `Harness::process` above; `every_store_method_has_a_case`
// keeps the list honest.

async fn tokens_users_and_sessions(h: &Harness) {
    use firebreak_domain::access::{Role, Scope};
    let now = Utc::now();
    let a = audit_row("token_created");
    assert_eq!(h.store.count_credentials(now).await.unwrap(), 0);
    let token = h
        .store
        .create_token(
            &firebreak_store::NewToken {
                id: "abc123".into(),
                name: "alertmanager".into(),
                secret_hash: "hash-of-secret".into(),
                scopes: vec![Scope::Ingest],
                created_by: "test".into(),
                at: now,
                expires_at: None,
            },
            &a,
        )
        .await
        .unwrap();
    assert_eq!(
        (token.name.as_str(), token.scopes.clone()),
        ("alertmanager", vec![Scope::Ingest])
    );
    let (row, hash) = h.store.token_secret("abc123").await.unwrap().unwrap();
    assert_eq!(
        (row.id.as_str(), hash.as_str()),
        ("abc123", "hash-of-secret")
    );
    assert!(h.store.token_secret("nope").await.unwrap().is_none());
    h.store.touch_token("abc123", now).await.unwrap();
    let listed = h.store.list_tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_used_at.is_some(), "{listed:?}");
    assert_eq!(h.store.count_credentials(now).await.unwrap(), 1);
    assert!(h.store.revoke_token("alertmanager", &a).await.unwrap());
    assert!(
        !h.store.revoke_token("alertmanager", &a).await.unwrap(),
        "once"
    );
    assert!(h.store.list_tokens().await.unwrap()[0].revoked_at.is_some());
    assert_eq!(h.store.count_credentials(now).await.unwrap(), 0);

    let user = h
        .store
        .create_user(&new_user("ana", "argon2-hash", Role::Operator), &a)
        .await
        .unwrap();
    assert_eq!((user.username.as_str(), user.role), ("ana", Role::Operator));
    assert!(matches!(
        h.store
            .create_user(&new_user("ana", "x", Role::Viewer), &a)
            .await,
        Err(StoreError::Conflict(_))
    ));
    let (u, hash) = h.store.user_secret("ana").await.unwrap().unwrap();
    assert_eq!((u.username.as_str(), hash.as_str()), ("ana", "argon2-hash"));
    assert_eq!(h.store.list_users().await.unwrap().len(), 1);
    assert_eq!(h.store.count_credentials(now).await.unwrap(), 1);
    let later = now + Duration::hours(12);
    h.store
        .create_session(&NewSession {
            id_hash: "session-hash",
            username: "ana",
            csrf_token: "csrf",
            at: now,
            expires_at: later,
        })
        .await
        .unwrap();
    let s = h.store.session("session-hash", now).await.unwrap().unwrap();
    assert_eq!(
        (s.user.username.as_str(), s.csrf_token.as_str()),
        ("ana", "csrf")
    );
    assert!(
        h.store
            .session("session-hash", later + Duration::seconds(1))
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
    h.store.delete_session("session-hash").await.unwrap();
    assert!(h
        .store
        .session("session-hash", now)
        .await
        .unwrap()
        .is_none());
    h.store
        .create_session(&NewSession {
            id_hash: "second",
            username: "ana",
            csrf_token: "csrf2",
            at: now,
            expires_at: later,
        })
        .await
        .unwrap();
    assert!(h.store.disable_user("ana", &a).await.unwrap());
    assert!(
        h.store.session("second", now).await.unwrap().is_none(),
        "disabling ends sessions"
    );
    assert!(h.store.list_users().await.unwrap()[0].disabled_at.is_some());
    assert_eq!(h.store.count_credentials(now).await.unwrap(), 0);

    // A person an identity provider vouched for: created on first sign-in,
    // their role following their groups, refused once disabled.
    let all = AuditFilter {
        limit: 1000,
        ..AuditFilter::default()
    };
    let before = h.store.list_audit(&all).await.unwrap().len();
    let first = h
        .store
        .sign_in_external("oidc:bo", Role::Viewer, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.username.as_str(), first.role),
        ("oidc:bo", Role::Viewer)
    );
    let again = h
        .store
        .sign_in_external("oidc:bo", Role::Viewer, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, first, "nothing changes, nothing is audited");
    let promoted = h
        .store
        .sign_in_external("oidc:bo", Role::Operator, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(promoted.role, Role::Operator);
    assert_eq!(
        h.store.list_audit(&all).await.unwrap().len(),
        before + 2,
        "created and promoted are audited"
    );
    let (_, hash) = h.store.user_secret("oidc:bo").await.unwrap().unwrap();
    assert!(
        !hash.starts_with("$argon2"),
        "no password can sign them in: {hash}"
    );
    h.store
        .create_session(&NewSession {
            id_hash: "third",
            username: "oidc:bo",
            csrf_token: "csrf3",
            at: now,
            expires_at: later,
        })
        .await
        .unwrap();
    assert_eq!(
        h.store
            .session("third", now)
            .await
            .unwrap()
            .unwrap()
            .user
            .role,
        Role::Operator
    );
    assert!(h.store.disable_user("oidc:bo", &a).await.unwrap());
    assert!(h
        .store
        .sign_in_external("oidc:bo", Role::Admin, &a)
        .await
        .unwrap()
        .is_none());
}

async fn flags_import_lock_and_note_evaluations(h: &Harness) {
    let def: firebreak_domain::flagd::FlagDefinition = serde_json::from_value(json!({
        "state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on",
        "metadata": {"team": "payments"}
    }))
    .unwrap();
    h.store
        .import_flags(
            &[("pay.flow".into(), def.clone())],
            "test",
            &audit_row("flags_imported"),
        )
        .await
        .unwrap();
    let f = h.store.flag("pay.flow").await.unwrap();
    assert_eq!(
        (f.enabled, f.definition.as_ref()),
        (false, Some(&def)),
        "enabled follows state"
    );
    assert!(f.created_at.is_some() && f.last_evaluated_at.is_none());
    // Evaluations are noted; an older time never moves it back.
    let t1 = t("2026-11-23T15:00:00Z");
    h.store
        .flags_evaluated(&[("pay.flow".into(), t1)])
        .await
        .unwrap();
    h.store
        .flags_evaluated(&[
            ("pay.flow".into(), t1 - Duration::hours(1)),
            ("missing".into(), t1),
        ])
        .await
        .unwrap();
    assert_eq!(
        h.store.flag("pay.flow").await.unwrap().last_evaluated_at,
        Some(t1)
    );
    // Read under a lock, written back whole, in one transaction.
    let mut tx = h.store.begin().await.unwrap();
    let mut row = tx.flag_for_update("pay.flow").await.unwrap().unwrap();
    assert!(tx.flag_for_update("nope").await.unwrap().is_none());
    row.enabled = true;
    row.owner = Some("team-pay".into());
    row.description = Some("the new payment flow".into());
    tx.put_flag(&row).await.unwrap();
    tx.commit().await.unwrap();
    let f = h.store.flag("pay.flow").await.unwrap();
    assert_eq!(
        (
            f.enabled,
            f.owner.as_deref(),
            f.description.as_deref(),
            f.definition.as_ref()
        ),
        (
            true,
            Some("team-pay"),
            Some("the new payment flow"),
            Some(&def)
        )
    );
    assert_eq!(h.store.list_flags().await.unwrap().len(), 1);
}

async fn previous_state_is_noted_once_under_the_lease(h: &Harness) {
    h.store
        .set_flag(&flag_write("f.lease", true, None), &audit_row("flag_set"))
        .await
        .unwrap();
    let mut tx = h.store.begin().await.unwrap();
    let rows = tx
        .insert_actions(&[new_action("lease-note", "flag:builtin:f.lease")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let id = rows[0].id;
    let now = Utc::now();
    let (claimed, _) = h
        .store
        .claim_action(now, now + Duration::seconds(30), "owner-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, id);
    let mut tx = h.store.begin().await.unwrap();
    assert!(
        !tx.note_previous_state(id, "owner-b", &json!({"enabled": false}))
            .await
            .unwrap(),
        "not the lease holder"
    );
    assert!(tx
        .note_previous_state(id, "owner-a", &json!({"enabled": true}))
        .await
        .unwrap());
    assert!(tx
        .note_previous_state(id, "owner-a", &json!({"enabled": false}))
        .await
        .unwrap());
    tx.commit().await.unwrap();
    assert_eq!(
        h.store.action(id).await.unwrap().previous_state,
        Some(json!({"enabled": true})),
        "the first kept"
    );
}

async fn rollouts_are_kept_run_by_run_with_their_events(h: &Harness) {
    use firebreak_domain::rollout::{RolloutPlan, RolloutStatus};
    let plan: RolloutPlan = serde_json::from_value(json!({
        "service": "checkout", "steps": [{"percent": 10}, {"percent": 50, "hold": "10m"}]
    }))
    .unwrap();
    let at = t("2026-11-23T15:00:00Z");
    let mut tx = h.store.begin().await.unwrap();
    let r = tx
        .insert_rollout(&firebreak_store::NewRollout {
            flag: "checkout.new-flow".into(),
            plan: plan.clone(),
            created_by: "user:ana".into(),
            at,
        })
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.step, r.generation),
        (RolloutStatus::Running, None, 0)
    );
    tx.commit().await.unwrap();
    // A second active rollout of the flag is refused (its transaction is
    // spent: PostgreSQL aborts it).
    let mut tx = h.store.begin().await.unwrap();
    assert!(
        matches!(
            tx.insert_rollout(&firebreak_store::NewRollout {
                flag: "checkout.new-flow".into(),
                plan: plan.clone(),
                created_by: "user:ana".into(),
                at,
            })
            .await,
            Err(StoreError::Conflict(_))
        ),
        "one active rollout per flag"
    );
    drop(tx);
    let mut tx = h.store.begin().await.unwrap();
    assert_eq!(tx.active_rollouts().await.unwrap().len(), 1);
    let mut change = firebreak_store::RolloutChange::at(at + Duration::minutes(1));
    change.step = Some(Some(0));
    change.step_started_at = Some(Some(at + Duration::minutes(1)));
    change.generation = Some(0);
    let moved = tx
        .update_rollout(r.id, &[RolloutStatus::Running], &change)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.step, Some(0));
    let mut stale = firebreak_store::RolloutChange::at(at + Duration::minutes(2));
    stale.generation = Some(1);
    stale.status = Some(RolloutStatus::Paused);
    assert!(
        tx.update_rollout(r.id, &[RolloutStatus::Running], &stale)
            .await
            .unwrap()
            .is_none(),
        "another run: nothing"
    );
    let event = |ref_id: &str, summary: &str| firebreak_store::RolloutEvent {
        rollout_id: r.id,
        at,
        kind: "step".into(),
        actor: "engine".into(),
        summary: summary.into(),
        ref_id: ref_id.into(),
    };
    tx.insert_rollout_events(&[event("s0", "10 %"), event("s0", "10 % again")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let events = h.store.rollout_events(r.id).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e.summary.as_str())
            .collect::<Vec<_>>(),
        ["10 %"],
        "once per ref"
    );
    assert_eq!(h.store.rollout(r.id).await.unwrap().step, Some(0));
    assert!(matches!(
        h.store.rollout(r.id + 1000).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        h.store
            .list_rollouts(Some("checkout.new-flow"), true, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(h
        .store
        .list_rollouts(Some("other"), false, 10)
        .await
        .unwrap()
        .is_empty());

    let service_event = |ref_id: &str| firebreak_store::ServiceEvent {
        service: "checkout".into(),
        at,
        kind: "gate_consulted".into(),
        source: "flagger".into(),
        summary: "go on".into(),
        ref_id: ref_id.into(),
    };
    h.store
        .record_service_events(&[service_event("a"), service_event("a"), service_event("b")])
        .await
        .unwrap();
    assert_eq!(
        h.store
            .service_timeline("checkout", 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(h
        .store
        .service_timeline("search", 10)
        .await
        .unwrap()
        .is_empty());
}

async fn causes_times_heads_and_insights_read_back(h: &Harness) {
    h.process(
        EventKind::Deploy,
        json!({"id": "d-cause", "service": "checkout", "environment": "prod", "version": "v2",
               "status": "succeeded", "started_at": "2026-11-23T13:55:00Z"}),
    )
    .await;
    h.process(
        EventKind::Alert,
        webhook(&[TestAlert::firing("eeee000000000001", "checkout")]),
    )
    .await;
    let id = h.incidents().await[0].id;
    assert!(
        h.store.postmortem(id).await.unwrap().is_none(),
        "no draft yet"
    );
    let times = h.store.incident_times(&[id]).await.unwrap();
    assert_eq!(times.len(), 1);
    assert_eq!(times[0].suspect_at, Some(t("2026-11-23T13:55:00Z")));
    assert!(times[0].mitigated_at.is_none());
    let a = audit_row("cause_marked");
    assert!(h
        .store
        .set_cause(
            &CauseWord {
                incident_id: id,
                deploy_id: "d-cause",
                cause: Some(true)
            },
            &a,
            &[],
        )
        .await
        .unwrap());
    assert!(h.store.incident_overview(id).await.unwrap().causes["d-cause"].cause);
    assert!(!h
        .store
        .set_cause(
            &CauseWord {
                incident_id: id,
                deploy_id: "no-such-deploy",
                cause: Some(true)
            },
            &a,
            &[],
        )
        .await
        .unwrap());
    let (deploys, incidents) = h
        .store
        .insights_data(
            &firebreak_domain::insights::Range {
                from: t("2026-11-01T00:00:00Z"),
                to: t("2026-12-01T00:00:00Z"),
            },
            Some("checkout"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(deploys.len(), 1);
    assert_eq!(incidents.len(), 1);
    let (head, hash) = h.store.audit_hash_at(None).await.unwrap().unwrap();
    assert!(hash.is_some());
    assert_eq!(
        h.store.audit_hash_at(Some(head)).await.unwrap().unwrap().1,
        hash
    );
}

/// Every store method is named by a case in this file, or is one of the
/// engine's batch writes exercised through `Harness::process`.
#[test]
fn every_store_method_has_a_case() {
    let lib = include_str!("../../services/store/src/lib.rs");
    let this = include_str!("contract.rs");
    let traits = &lib[lib.find("pub trait IncidentStore").unwrap()..lib.find("mod tests").unwrap()];
    let through_the_engine = [
        "lock_groups",
        "existing_alert_ids",
        "latest_incidents",
        "open_incidents",
        "reopen_incidents",
        "insert_alerts",
        "upsert_incident_alerts",
        "insert_deploys",
        "insert_gates",
        "insert_logs",
        "deploys_between",
        "gates_between",
        "open_incidents_for",
        "open_incidents_with_flag",
        "find_deploy",
        "incidents_of_deploys",
        "attach_changes",
        "attach_gates",
        "insert_timeline",
        "resolvable_incidents",
        "resolve_incidents",
    ];
    let mut missing = Vec::new();
    for line in traits.lines() {
        let Some(rest) = line
            .trim()
            .strip_prefix("async fn ")
            .or_else(|| line.trim().strip_prefix("fn "))
        else {
            continue;
        };
        let name = rest.split(['(', '<']).next().unwrap();
        if !this.contains(&format!(".{name}(")) && !through_the_engine.contains(&name) {
            missing.push(name.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "store methods without a contract case: {missing:?}"
    );
}

async fn people_declare_acknowledge_and_update_incidents(h: &Harness) {
    let at = t("2026-11-23T15:00:00Z");
    let entry = |kind: &'static str| firebreak_domain::timeline::NewEntry {
        incident_id: 0,
        at,
        kind,
        source: "user:ana".into(),
        summary: kind.into(),
        ref_id: format!("{kind}:1"),
    };
    let i = h
        .store
        .declare_incident(
            &firebreak_store::NewDeclaredIncident {
                title: "Checkout slow".into(),
                service: "checkout".into(),
                environment: Some("prod".into()),
                severity: Some("SEV2".into()),
                summary: None,
                by: "user:ana".into(),
                at,
            },
            &audit_row("incident_declared"),
            &[entry("incident_declared")],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            i.status.as_str(),
            i.response.declared_severity.as_deref(),
            i.response.declared_by.as_deref()
        ),
        ("open", Some("SEV2"), Some("user:ana"))
    );
    assert_eq!(h.timeline_kinds(i.id).await, ["incident_declared"]);
    let ack = |id: i64| {
        let e = firebreak_domain::timeline::NewEntry {
            incident_id: id,
            ..entry("incident_acknowledged")
        };
        async move {
            h.store
                .acknowledge_incident(
                    id,
                    &NewAudit {
                        at,
                        actor: "user:ana".into(),
                        ..audit_row("incident_acknowledged")
                    },
                    &[e],
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(ack(i.id).await, Some(true));
    assert_eq!(
        ack(i.id).await,
        Some(false),
        "the first acknowledgement stays"
    );
    assert_eq!(ack(i.id + 1000).await, None);
    let update = firebreak_store::IncidentUpdate {
        declared_severity: Some(Some("SEV1".into())),
        stage: Some(Some("identified".into())),
        commander: Some(Some("user:ana".into())),
        summary: None,
    };
    let e = firebreak_domain::timeline::NewEntry {
        incident_id: i.id,
        ..entry("incident_updated")
    };
    let after = h
        .store
        .update_incident(i.id, &update, &audit_row("incident_updated"), &[e])
        .await
        .unwrap();
    let r = &after.response;
    assert_eq!(
        (
            r.declared_severity.as_deref(),
            r.stage.as_deref(),
            r.commander.as_deref(),
            r.acknowledged_by.as_deref()
        ),
        (
            Some("SEV1"),
            Some("identified"),
            Some("user:ana"),
            Some("user:ana")
        )
    );
    // `Some(None)` clears; what is not named stays.
    let clear = firebreak_store::IncidentUpdate {
        commander: Some(None),
        ..Default::default()
    };
    let after = h
        .store
        .update_incident(i.id, &clear, &audit_row("incident_updated"), &[])
        .await
        .unwrap();
    assert_eq!(
        (after.response.commander, after.response.stage.as_deref()),
        (None, Some("identified"))
    );
    assert!(matches!(
        h.store
            .update_incident(i.id + 1000, &clear, &audit_row("x"), &[])
            .await,
        Err(StoreError::NotFound)
    ));
    // The list filters by what people set.
    let list = |f: IncidentFilter| async move { h.store.list_incidents(&f).await.unwrap().len() };
    let base = IncidentFilter {
        limit: 10,
        ..IncidentFilter::default()
    };
    assert_eq!(
        list(IncidentFilter {
            severities: Some(vec!["SEV1".into()]),
            ..base.clone()
        })
        .await,
        1
    );
    assert_eq!(
        list(IncidentFilter {
            severities: Some(vec!["SEV3".into()]),
            ..base.clone()
        })
        .await,
        0
    );
    assert_eq!(
        list(IncidentFilter {
            stage: Some("identified".into()),
            ..base.clone()
        })
        .await,
        1
    );
    assert_eq!(
        list(IncidentFilter {
            stage: Some("investigating".into()),
            ..base.clone()
        })
        .await,
        0
    );
    assert_eq!(
        list(IncidentFilter {
            acknowledged: Some(true),
            ..base.clone()
        })
        .await,
        1
    );
    assert_eq!(
        list(IncidentFilter {
            acknowledged: Some(false),
            ..base.clone()
        })
        .await,
        0
    );
    assert_eq!(
        list(IncidentFilter {
            commander: Some("user:ana".into()),
            ..base
        })
        .await,
        0
    );
}

async fn action_items_change_once_and_leave_through_one_claimed_export(h: &Harness) {
    use firebreak_store::{ActionItemChange, ExportOutcome, NewActionItem};
    h.process(
        EventKind::Alert,
        webhook(&[TestAlert::firing("ac00000000000001", "checkout")]),
    )
    .await;
    let incident = h.incidents().await[0].id;
    let at = t("2026-11-23T15:00:00Z");
    let entry = firebreak_domain::timeline::NewEntry {
        incident_id: incident,
        at,
        kind: "action_item",
        source: "user:ana".into(),
        summary: "ana added an action item".into(),
        ref_id: String::new(),
    };
    let new = |title: &str, due: Option<&str>, export_to: Option<&str>| NewActionItem {
        incident_id: incident,
        title: title.into(),
        owner: Some("user:bo".into()),
        due: due.map(str::to_string),
        priority: "high".into(),
        created_by: "user:ana".into(),
        at,
        export_to: export_to.map(str::to_string),
    };
    let a = h
        .store
        .create_action_item(
            &new("Gate on errors", Some("2026-11-01"), None),
            &audit_row("action_item_created"),
            &entry,
        )
        .await
        .unwrap();
    assert_eq!(
        (
            a.status.as_str(),
            a.owner.as_deref(),
            a.due.as_deref(),
            a.tracker.clone(),
            a.export_state.clone()
        ),
        ("open", Some("user:bo"), Some("2026-11-01"), None, None)
    );
    let missing = NewActionItem {
        incident_id: 999_999,
        ..new("x", None, None)
    };
    assert!(matches!(
        h.store
            .create_action_item(&missing, &audit_row("action_item_created"), &entry)
            .await,
        Err(StoreError::NotFound)
    ));
    let b = h
        .store
        .create_action_item(
            &new("Runbook", None, Some("github")),
            &audit_row("action_item_created"),
            &entry,
        )
        .await
        .unwrap();
    assert_eq!(b.export_state.as_deref(), Some("pending"));
    assert_eq!(
        h.store.action_items(incident).await.unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(h.store.action_item(a.id).await.unwrap(), a);
    assert!(matches!(
        h.store.action_item(999_999).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        h.store.action_item_counts("2026-11-23").await.unwrap(),
        (2, 1)
    );
    assert_eq!(
        h.timeline_kinds(incident)
            .await
            .iter()
            .filter(|k| *k == "action_item")
            .count(),
        2,
        "one entry per item"
    );

    // A change that changes nothing writes nothing; a real one is kept.
    let same = h
        .store
        .update_action_item(
            a.id,
            &ActionItemChange::default(),
            &audit_at("action_item_changed", at),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(same, a);
    let done = h
        .store
        .update_action_item(
            a.id,
            &ActionItemChange {
                status: Some("done".into()),
                owner: Some(None),
                ..ActionItemChange::default()
            },
            &audit_at("action_item_changed", at + Duration::minutes(1)),
            &[],
        )
        .await
        .unwrap();
    assert_eq!((done.status.as_str(), done.owner.clone()), ("done", None));
    assert_eq!(done.updated_at, at + Duration::minutes(1));
    assert_eq!(
        h.store.action_item_counts("2026-11-23").await.unwrap(),
        (1, 0)
    );

    // The outbox: one claim at a time, failures wait, success keeps the key.
    let now = t("2026-11-23T16:00:00Z");
    let claimed = h
        .store
        .claim_action_item_export(now, now + Duration::seconds(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, b.id);
    assert!(
        h.store
            .claim_action_item_export(now, now + Duration::seconds(60))
            .await
            .unwrap()
            .is_none(),
        "claimed by someone else"
    );
    h.store
        .finish_action_item_export(
            b.id,
            &ExportOutcome::Failed {
                error: "GitHub answered 503".into(),
                next_at: now + Duration::seconds(30),
            },
            now,
        )
        .await
        .unwrap();
    let failed = h.store.action_item(b.id).await.unwrap();
    assert_eq!(
        (
            failed.export_state.as_deref(),
            failed.export_error.as_deref(),
            failed.export_attempts
        ),
        (Some("failed"), Some("GitHub answered 503"), 1)
    );
    assert!(
        h.store
            .claim_action_item_export(now + Duration::seconds(10), now + Duration::seconds(70))
            .await
            .unwrap()
            .is_none(),
        "not due yet"
    );
    let again = now + Duration::seconds(31);
    assert!(h
        .store
        .claim_action_item_export(again, again + Duration::seconds(60))
        .await
        .unwrap()
        .is_some());
    h.store
        .finish_action_item_export(
            b.id,
            &ExportOutcome::Exported {
                key: "#12".into(),
                url: "https://github.com/acme/shop/issues/12".into(),
            },
            again,
        )
        .await
        .unwrap();
    let exported = h.store.action_item(b.id).await.unwrap();
    assert_eq!(
        (
            exported.export_state.as_deref(),
            exported.tracker_key.as_deref(),
            exported.export_error.clone()
        ),
        (Some("exported"), Some("#12"), None)
    );
    assert!(matches!(
        h.store
            .request_action_item_export(b.id, "jira", &audit_at("action_item_export", again))
            .await,
        Err(StoreError::Conflict(m)) if m.contains("#12")
    ));
    let asked = h
        .store
        .request_action_item_export(a.id, "jira", &audit_at("action_item_export", again))
        .await
        .unwrap();
    assert_eq!(
        (asked.tracker.as_deref(), asked.export_state.as_deref()),
        (Some("jira"), Some("pending"))
    );

    // The tracker's word, by key; an unknown key is nobody's.
    let entry_for = |row: &firebreak_store::ActionItemRow| firebreak_domain::timeline::NewEntry {
        incident_id: row.incident_id,
        ref_id: format!("action-item:{}:closed", row.id),
        ..entry.clone()
    };
    let closed = h
        .store
        .set_action_item_status_by_tracker(
            &TrackerStatus {
                tracker: "github",
                key: "#12",
                status: "done",
                at: again,
            },
            &audit_row("tracker"),
            &entry_for,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.status, "done");
    assert!(h
        .store
        .set_action_item_status_by_tracker(
            &TrackerStatus {
                tracker: "github",
                key: "#99",
                status: "done",
                at: again
            },
            &audit_row("tracker"),
            &entry_for
        )
        .await
        .unwrap()
        .is_none());
    assert!(
        h.store
            .set_action_item_status_by_tracker(
                &TrackerStatus {
                    tracker: "jira",
                    key: "#12",
                    status: "done",
                    at: again
                },
                &audit_row("tracker"),
                &entry_for
            )
            .await
            .unwrap()
            .is_none(),
        "keys are per tracker"
    );
}

async fn presence_is_shared_bounded_and_forgotten(h: &Harness) {
    h.process(
        EventKind::Alert,
        webhook(&[TestAlert::firing("pr00000000000001", "checkout")]),
    )
    .await;
    let id = h.incidents().await[0].id;
    let t0 = t("2026-11-23T15:00:00Z");
    let window = Duration::seconds(20);
    let seen = |who: &'static str, now: DateTime<Utc>, max: i64| {
        let store = h.store.clone();
        async move {
            store
                .note_presence(&Presence {
                    incident: id,
                    who,
                    now,
                    since: now - window,
                    max_rows: max,
                })
                .await
                .unwrap()
        }
    };
    assert!(seen("user:ana", t0, 100).await.is_empty());
    assert_eq!(
        seen("user:bo", t0 + Duration::seconds(1), 100).await,
        ["user:ana"]
    );
    assert_eq!(
        seen("user:ana", t0 + Duration::seconds(2), 100).await,
        ["user:bo"]
    );
    // Full: a newcomer sees the others but is not recorded.
    assert_eq!(
        seen("user:cy", t0 + Duration::seconds(3), 2).await,
        ["user:ana", "user:bo"]
    );
    assert_eq!(
        seen("user:ana", t0 + Duration::seconds(4), 100).await,
        ["user:bo"]
    );
    // Past the window, people are forgotten.
    assert!(seen("user:ana", t0 + Duration::seconds(40), 100)
        .await
        .is_empty());
}
