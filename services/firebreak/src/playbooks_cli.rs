//! `firebreak playbooks check|test|replay`: offline tools for playbook authors.
//! `check` and `test` touch nothing; `replay` reads the store and writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use firebreak_domain::playbook::{Facts, Trigger, Verdict};
use firebreak_domain::{decode, Decoded, DeployEvent, EventKind};
use firebreak_remediation::playbooks::{load_dir, Loaded};
use firebreak_remediation::Providers;
use firebreak_store::ActionFilter;

use crate::config::{parse_duration, Config, Overrides};

#[derive(Debug, clap::Subcommand)]
pub enum PlaybooksCommand {
    /// Validate every playbook in DIR; exit 1 with file:line errors.
    Check {
        /// Playbook directory (default: --playbooks / FIREBREAK_PLAYBOOKS, else ./playbooks).
        dir: Option<PathBuf>,
    },
    /// Show which playbooks match the given events and what each would do. No side effects.
    Test {
        /// An event file: an Alertmanager webhook, a deploy event or a gate result
        /// (JSON). Repeat to give deploys before the alert they should explain.
        #[arg(long = "event", required = true)]
        events: Vec<PathBuf>,
        /// Playbook directory (default as for `check`).
        dir: Option<PathBuf>,
        /// Evaluate time windows at this moment (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<DateTime<Utc>>,
    },
    /// Backtest the playbooks in dry-run over stored history: which incidents each
    /// would have acted on, against what actually ran.
    Replay {
        /// How far back, e.g. 7d, 24h.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Directory of the embedded store (when no database URL is configured).
        #[arg(long, env = "FIREBREAK_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Playbook directory (default as for `check`).
        dir: Option<PathBuf>,
    },
}

impl PlaybooksCommand {
    pub fn overrides(&self) -> Overrides {
        match self {
            PlaybooksCommand::Replay { data_dir, .. } => Overrides {
                data_dir: data_dir.clone(),
                ..Overrides::default()
            },
            _ => Overrides::default(),
        }
    }

    fn dir(&self, config: &Config) -> PathBuf {
        let given = match self {
            PlaybooksCommand::Check { dir } => dir,
            PlaybooksCommand::Test { dir, .. } => dir,
            PlaybooksCommand::Replay { dir, .. } => dir,
        };
        given
            .clone()
            .or_else(|| config.playbooks_dir.clone())
            .unwrap_or_else(|| PathBuf::from("playbooks"))
    }
}

/// Loads `dir` checked against the configured providers (the built-in flag
/// store needs no database to be named).
fn load(dir: &std::path::Path, config: &Config) -> Result<Loaded, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let providers = Arc::new(Providers::new(
        None,
        &config.kill_switches,
        config.rollbacks.clone(),
        config.notifiers.clone(),
        config.slack.clone(),
    ));
    Ok(load_dir(
        dir,
        &Loaded::default(),
        &crate::step_check(&providers),
    ))
}

pub fn run(cmd: &PlaybooksCommand, config: &Config) -> ExitCode {
    let dir = cmd.dir(config);
    let loaded = match load(&dir, config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("firebreak: {e}");
            return ExitCode::from(2);
        }
    };
    for e in &loaded.errors {
        eprintln!("{e}");
    }
    match cmd {
        PlaybooksCommand::Check { .. } => {
            if loaded.errors.is_empty() {
                println!("{}: {} playbooks OK", dir.display(), loaded.playbooks.len());
                for p in &loaded.playbooks {
                    println!("  {} ({}, version {})", p.name(), p.file, p.version);
                }
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "{}: {} of {} files have errors",
                    dir.display(),
                    loaded.errors.len(),
                    loaded.errors.len() + loaded.playbooks.len()
                );
                ExitCode::FAILURE
            }
        }
        PlaybooksCommand::Test { events, at, .. } => {
            test(&loaded, events, at.unwrap_or_else(Utc::now))
        }
        PlaybooksCommand::Replay { since, .. } => {
            let Some(window) =
                parse_duration(since).and_then(|d| chrono::Duration::from_std(d).ok())
            else {
                eprintln!("firebreak: --since {since:?} is not a duration like 7d or 24h");
                return ExitCode::from(2);
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("firebreak: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(replay(&loaded, config, Utc::now() - window)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("firebreak: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn read_event(path: &PathBuf) -> Result<Decoded, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let kind = if value.get("alerts").is_some() {
        EventKind::Alert
    } else if value.get("verdict").is_some() || value.get("gate").is_some() {
        EventKind::Gate
    } else {
        EventKind::Deploy
    };
    decode(kind, &bytes, Utc::now()).map_err(|e| format!("{}: {e}", path.display()))
}

fn test(loaded: &Loaded, files: &[PathBuf], now: DateTime<Utc>) -> ExitCode {
    let mut deploys: Vec<DeployEvent> = Vec::new();
    let mut decoded = Vec::new();
    for f in files {
        match read_event(f) {
            Ok(d) => decoded.push(d),
            Err(e) => {
                eprintln!("firebreak: {e}");
                return ExitCode::from(2);
            }
        }
    }
    for d in &decoded {
        if let Decoded::Deploys(ds) = d {
            deploys.extend(ds.iter().cloned());
        }
    }
    let mut any = false;
    for d in &decoded {
        let triggers: Vec<Trigger<'_>> = match d {
            Decoded::Alerts(a) => a.iter().map(Trigger::Alert).collect(),
            Decoded::Deploys(ds) => ds.iter().map(Trigger::Deploy).collect(),
            Decoded::Gates(g) => g.iter().map(Trigger::Gate).collect(),
            Decoded::Logs(_) => Vec::new(),
        };
        for t in triggers {
            println!(
                "{}{}",
                t.describe(),
                t.service().map(|s| format!(" ({s})")).unwrap_or_default()
            );
            let latest = latest_before(&deploys, &t);
            for pb in &loaded.playbooks {
                match pb.evaluate(
                    &t,
                    &Facts {
                        latest_deploy: latest,
                    },
                    now,
                ) {
                    Verdict::NoMatch => {}
                    Verdict::Unmet(why) => {
                        println!("  - {} matched but would not act: {why}", pb.name())
                    }
                    Verdict::Match => {
                        any = true;
                        println!("  + {}@{} would act:", pb.name(), pb.version);
                        let g = &pb.spec.guard;
                        for (i, step) in pb.spec.steps.iter().enumerate() {
                            let held = g.require_approval || step.require_approval;
                            println!(
                                "      {}. {}{}{}",
                                i + 1,
                                step.action.describe(),
                                if held { " [held for approval]" } else { "" },
                                if g.dry_run { " [dry run]" } else { "" }
                            );
                        }
                        let mut guards = Vec::new();
                        if let Some(c) = g.cooldown {
                            guards.push(format!("cooldown {c}"));
                        }
                        if let Some(b) = g.max_runs {
                            guards.push(format!("max {} runs per {}", b.count, b.per));
                        }
                        if !guards.is_empty() {
                            println!("      guard: {}", guards.join(", "));
                        }
                    }
                }
            }
        }
    }
    if !any {
        println!("no playbook would act");
    }
    ExitCode::SUCCESS
}

fn latest_before<'a>(deploys: &'a [DeployEvent], t: &Trigger<'_>) -> Option<&'a DeployEvent> {
    let service = t.service()?;
    let env = t.environment();
    deploys
        .iter()
        .filter(|d| {
            d.service == service
                && d.started_at <= t.at()
                && (env.is_none() || d.environment.is_none() || d.environment.as_deref() == env)
        })
        .max_by_key(|d| d.started_at)
}

async fn replay(loaded: &Loaded, config: &Config, since: DateTime<Utc>) -> anyhow::Result<()> {
    if config.database_url.0.starts_with("sqlite:")
        && !config.data_dir.join("firebreak.db").exists()
    {
        anyhow::bail!(
            "no Firebreak data in {} (give --data-dir, or FIREBREAK_DATABASE_URL for PostgreSQL)",
            config.data_dir.display()
        );
    }
    let store = firebreak_store::connect(&config.database_url.0)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the store at {}: {e}", config.database_url))?;
    let history = store.history_since(since).await?;
    let actual = store
        .list_actions(&ActionFilter {
            since: Some(since),
            limit: 100_000,
            ..ActionFilter::default()
        })
        .await?;
    store.close().await;

    let mut events: Vec<(DateTime<Utc>, Trigger<'_>, Option<i64>)> = Vec::new();
    for (incident, a) in &history.alerts {
        events.push((a.occurred_at(), Trigger::Alert(a), *incident));
    }
    for g in history.gates.iter().filter(|g| g.evaluated_at >= since) {
        events.push((g.evaluated_at, Trigger::Gate(g), None));
    }
    for d in history.deploys.iter().filter(|d| d.started_at >= since) {
        events.push((d.started_at, Trigger::Deploy(d), None));
    }
    events.sort_by_key(|(at, _, _)| *at);
    println!(
        "replaying {} alerts, {} gate results and {} deploys since {} in dry-run",
        history.alerts.len(),
        history.gates.len(),
        history
            .deploys
            .iter()
            .filter(|d| d.started_at >= since)
            .count(),
        since.format("%Y-%m-%d %H:%M UTC")
    );
    for pb in &loaded.playbooks {
        let mut would: BTreeSet<String> = BTreeSet::new();
        for (at, t, incident) in &events {
            let latest = latest_before(&history.deploys, t);
            if pb.evaluate(
                t,
                &Facts {
                    latest_deploy: latest,
                },
                *at,
            ) == Verdict::Match
            {
                would.insert(
                    incident
                        .map(|i| format!("#{i}"))
                        .unwrap_or_else(|| t.id().to_string()),
                );
            }
        }
        let mut did: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
        for a in actual
            .iter()
            .filter(|a| a.playbook == pb.name() && !a.dedupe_key.starts_with("escalate:"))
        {
            let key = a
                .incident_id
                .map(|i| format!("#{i}"))
                .unwrap_or_else(|| a.trigger_id.clone());
            did.entry(key).or_default().push(a.status.as_str());
        }
        let did_keys: BTreeSet<String> = did.keys().cloned().collect();
        println!("\n{}@{} ({})", pb.name(), pb.version, pb.file);
        println!("  would act on: {}", list(&would));
        println!(
            "  actually ran: {}",
            if did.is_empty() {
                "nothing".to_string()
            } else {
                did.iter()
                    .map(|(k, s)| format!("{k} ({})", s.join(", ")))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let only_new: BTreeSet<_> = would.difference(&did_keys).cloned().collect();
        let only_old: BTreeSet<_> = did_keys.difference(&would).cloned().collect();
        if !only_new.is_empty() {
            println!("  would act where nothing ran: {}", list(&only_new));
        }
        if !only_old.is_empty() {
            println!(
                "  ran where this version would not act: {}",
                list(&only_old)
            );
        }
    }
    println!(
        "\nguards (cooldown, budgets, approval) are not applied in a replay: it shows matches."
    );
    Ok(())
}

fn list(s: &BTreeSet<String>) -> String {
    if s.is_empty() {
        "nothing".into()
    } else {
        s.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}
