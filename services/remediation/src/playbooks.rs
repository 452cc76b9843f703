//! The loaded playbook set: read from a directory, checked against the
//! configured providers, reloaded when files change. A file that fails to load
//! keeps its previous good version (if any) and is reported; it never empties
//! or corrupts the set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use firebreak_domain::metrics::Metrics;
use firebreak_domain::playbook::{LoadError, Playbook, StepAction, Trigger};
use firebreak_domain::AlertEvent;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Checks a step against what is configured (providers, notifiers).
pub type StepCheck = Arc<dyn Fn(&StepAction) -> Option<String> + Send + Sync>;

#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub playbooks: Vec<Arc<Playbook>>,
    pub errors: Vec<LoadError>,
    /// Files whose current text failed and whose previous version is still active.
    pub stale: Vec<String>,
    pub loaded_at: Option<DateTime<Utc>>,
    pub dir: Option<String>,
}

/// What `GET /api/v1/playbooks` shows of one playbook.
#[derive(Debug, Serialize)]
pub struct PlaybookView {
    pub name: String,
    pub file: String,
    pub version: String,
    pub description: Option<String>,
    pub trigger: &'static str,
    pub steps: Vec<String>,
    pub guard: firebreak_domain::playbook::Guard,
    /// The file changed and the new text is broken: this is the previous version.
    pub stale: bool,
}

impl Loaded {
    /// Which of `alerts` a loaded playbook's trigger could act on (by index),
    /// if any: ingest sends those on the urgent lane, ahead of any backlog.
    pub fn urgent_alerts(&self, alerts: &[AlertEvent]) -> Option<Vec<usize>> {
        if self.playbooks.is_empty() {
            return None;
        }
        let urgent: Vec<usize> = alerts
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                let t = Trigger::Alert(a);
                self.playbooks.iter().any(|p| p.could_match(&t))
            })
            .map(|(i, _)| i)
            .collect();
        (!urgent.is_empty()).then_some(urgent)
    }

    pub fn view(&self) -> Vec<PlaybookView> {
        self.playbooks
            .iter()
            .map(|p| PlaybookView {
                name: p.spec.name.clone(),
                file: p.file.clone(),
                version: p.version.clone(),
                description: p.spec.description.clone(),
                trigger: if p.spec.when.alert.is_some() {
                    "alert"
                } else if p.spec.when.gate.is_some() {
                    "gate"
                } else {
                    "deploy"
                },
                steps: p
                    .spec
                    .steps
                    .iter()
                    .map(|s| s.action.kind().to_string())
                    .collect(),
                guard: p.spec.guard.clone(),
                stale: self.stale.contains(&p.file),
            })
            .collect()
    }
}

/// Loads every `*.yaml`/`*.yml` file in `dir` (sorted by name). `previous` supplies
/// the last good version of a file that now fails.
pub fn load_dir(dir: &Path, previous: &Loaded, check: &StepCheck) -> Loaded {
    let mut out = Loaded {
        loaded_at: Some(Utc::now()),
        dir: Some(dir.display().to_string()),
        ..Loaded::default()
    };
    let files = match yaml_files(dir) {
        Ok(f) => f,
        Err(e) => {
            out.errors.push(LoadError {
                file: dir.display().to_string(),
                line: None,
                column: None,
                message: format!("cannot read the playbook directory: {e}"),
            });
            // Keep what was loaded rather than dropping every playbook.
            out.playbooks = previous.playbooks.clone();
            return out;
        }
    };
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for path in files {
        let file = path.display().to_string();
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| LoadError {
                file: file.clone(),
                line: None,
                column: None,
                message: format!("cannot read: {e}"),
            })
            .and_then(|text| Playbook::parse(&file, &text))
            .and_then(|pb| {
                for step in &pb.spec.steps {
                    if let Some(problem) = check(&step.action) {
                        let needle = match &step.action {
                            StepAction::KillSwitch(k) => k.provider.clone(),
                            StepAction::Rollback(r) => r.provider.clone(),
                            StepAction::Notify(n) => n.webhook.clone().unwrap_or_default(),
                            StepAction::Http(h) => h.url.clone(),
                            StepAction::RolloutStep(r) => r.flag.clone(),
                        };
                        let line = std::fs::read_to_string(&path).ok().and_then(|t| {
                            t.lines()
                                .position(|l| !needle.is_empty() && l.contains(&needle))
                                .map(|i| i + 1)
                        });
                        return Err(LoadError {
                            file: file.clone(),
                            line,
                            column: None,
                            message: problem,
                        });
                    }
                }
                if let Some(other) = names.get(&pb.spec.name) {
                    return Err(LoadError {
                        file: file.clone(),
                        line: None,
                        column: None,
                        message: format!(
                            "playbook name {:?} is already used by {other}",
                            pb.spec.name
                        ),
                    });
                }
                Ok(pb)
            });
        match parsed {
            Ok(pb) => {
                names.insert(pb.spec.name.clone(), file.clone());
                out.playbooks.push(Arc::new(pb));
            }
            Err(e) => {
                if let Some(old) = previous.playbooks.iter().find(|p| p.file == file) {
                    if !names.contains_key(&old.spec.name) {
                        names.insert(old.spec.name.clone(), file.clone());
                        out.playbooks.push(old.clone());
                        out.stale.push(file.clone());
                    }
                }
                out.errors.push(e);
            }
        }
    }
    out
}

fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// What changes when a file is edited, added or removed.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map(|m| m.len()).unwrap_or(0);
            (p, modified, len)
        })
        .collect()
}

/// The active playbook set, shared by the engine and the API.
pub struct PlaybookSet {
    current: RwLock<Arc<Loaded>>,
    dir: Option<PathBuf>,
    check: StepCheck,
    metrics: Arc<Metrics>,
}

impl PlaybookSet {
    /// No playbooks: automation does nothing.
    pub fn empty(metrics: Arc<Metrics>) -> PlaybookSet {
        PlaybookSet {
            current: RwLock::new(Arc::new(Loaded::default())),
            dir: None,
            check: Arc::new(|_| None),
            metrics,
        }
    }

    /// Loads `dir` now; [`PlaybookSet::watch`] keeps it current.
    pub fn load(dir: PathBuf, check: StepCheck, metrics: Arc<Metrics>) -> PlaybookSet {
        let set = PlaybookSet {
            current: RwLock::new(Arc::new(Loaded::default())),
            dir: Some(dir),
            check,
            metrics,
        };
        set.reload();
        set
    }

    pub fn current(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Reads the directory again; returns the new set.
    pub fn reload(&self) -> Arc<Loaded> {
        let Some(dir) = &self.dir else {
            return self.current();
        };
        let previous = self.current();
        let loaded = Arc::new(load_dir(dir, &previous, &self.check));
        for e in &loaded.errors {
            tracing::error!(error = %e, "playbook not loaded; the previous good version (if any) stays active");
        }
        tracing::info!(
            dir = %dir.display(),
            loaded = loaded.playbooks.len(),
            errors = loaded.errors.len(),
            "playbooks loaded"
        );
        self.metrics
            .playbooks(loaded.playbooks.len() as u64, loaded.errors.len() as u64);
        match self.current.write() {
            Ok(mut g) => *g = loaded.clone(),
            Err(p) => *p.into_inner() = loaded.clone(),
        }
        loaded
    }

    /// Reloads when a file in the directory changes, until `shutdown`.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let Some(dir) = self.dir.clone() else { return };
        let mut seen = fingerprint(&dir);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = fingerprint(&dir);
            if now != seen {
                seen = now;
                self.reload();
            }
        }
    }
}
