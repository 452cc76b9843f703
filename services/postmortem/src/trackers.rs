//! Trackers: where action items become issues a team already works from
//! (GitHub Issues, Jira Cloud), and how their status comes back.
//!
//! Exports go through an outbox kept on the action item's row: asking for
//! one only marks the item `pending`; [`run_exporter`] (in every engine
//! process; a claim keeps one process per item) calls the tracker, records
//! the issue's key and URL, or records the failure and tries again with
//! backoff. A tracker that is down never blocks the incident or the item.
//! A process that stops between the tracker's answer and the record may
//! export an item twice (at least once): the tracker's own duplicate check
//! is a person's.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use firebreak_domain::duration::Dur;
use firebreak_domain::secret::Secret;
use firebreak_store::{ActionItemRow, ExportOutcome, Store};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// `[trackers]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackersConfig {
    /// Where a new action item goes when its creator names no tracker:
    /// `github`, `jira`, or unset (kept in Firebreak until someone exports it).
    pub default: Option<String>,
    /// The wait after a failed export; it doubles with each failure, to at
    /// most an hour.
    pub retry: Dur,
    pub github: Option<GithubConfig>,
    pub jira: Option<JiraConfig>,
}

impl Default for TrackersConfig {
    fn default() -> Self {
        TrackersConfig {
            default: None,
            retry: Dur(chrono::Duration::seconds(30)),
            github: None,
            jira: None,
        }
    }
}

/// `[trackers.github]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    #[serde(default = "github_api")]
    pub api_url: String,
    /// `owner/name`.
    pub repo: String,
    /// A token that may create issues in `repo`.
    pub token: Secret,
    /// Verifies `X-Hub-Signature-256` of the repository's `issues` webhook.
    pub webhook_secret: Option<Secret>,
    /// Labels every exported issue carries (besides `priority:<p>`).
    #[serde(default = "default_labels")]
    pub labels: Vec<String>,
}

/// `[trackers.jira]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JiraConfig {
    /// The site, e.g. `https://example.atlassian.net`.
    pub url: String,
    /// The project key, e.g. `OPS`.
    pub project: String,
    #[serde(default = "task")]
    pub issue_type: String,
    /// Basic authentication: the account's email and an API token.
    pub email: String,
    pub api_token: Secret,
    /// Verifies `X-Hub-Signature` of the admin webhook (`jira:issue_updated`).
    pub webhook_secret: Option<Secret>,
    #[serde(default = "default_labels")]
    pub labels: Vec<String>,
}

fn github_api() -> String {
    "https://api.github.com".into()
}

fn task() -> String {
    "Task".into()
}

fn default_labels() -> Vec<String> {
    vec!["firebreak".into()]
}

pub const TRACKERS: [&str; 2] = ["github", "jira"];

impl TrackersConfig {
    /// What is wrong with this configuration, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if let Some(d) = &self.default {
            if !self.configured(d) {
                return Err(format!(
                    "key `trackers.default`: {d:?} is not a configured tracker (configure [trackers.{d}], or leave the default unset)"
                ));
            }
        }
        if let Some(g) = &self.github {
            let parts: Vec<&str> = g.repo.split('/').collect();
            let segment = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    && s != "."
                    && s != ".."
            };
            if parts.len() != 2 || !parts.iter().all(|p| segment(p)) {
                return Err(format!(
                    "key `trackers.github.repo`: {:?} is not `owner/name`",
                    g.repo
                ));
            }
            check_url("trackers.github.api_url", &g.api_url)?;
        }
        if let Some(j) = &self.jira {
            check_url("trackers.jira.url", &j.url)?;
            if j.project.is_empty()
                || !j
                    .project
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(format!(
                    "key `trackers.jira.project`: {:?} is not a Jira project key (capital letters, digits, _)",
                    j.project
                ));
            }
        }
        Ok(())
    }

    /// Whether `tracker` is configured.
    pub fn configured(&self, tracker: &str) -> bool {
        match tracker {
            "github" => self.github.is_some(),
            "jira" => self.jira.is_some(),
            _ => false,
        }
    }
}

fn check_url(key: &str, url: &str) -> Result<(), String> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err(format!("key `{key}`: {url:?} is not an http(s) URL"))
    }
}

/// Why an export did not happen.
#[derive(Debug, Clone)]
pub struct ExportError(pub String);

/// What is exported with an item besides the item: where people read it.
#[derive(Debug, Clone)]
pub struct Backlink {
    pub incident_title: String,
    /// The incident's page, when Firebreak knows its public address.
    pub page: Option<String>,
}

/// The issue's text, in Markdown (GitHub) or as lines (Jira's document).
fn description(item: &ActionItemRow, link: &Backlink) -> Vec<String> {
    let mut lines = vec![format!(
        "Action item from incident #{} ({}), created by {} in Firebreak.",
        item.incident_id, link.incident_title, item.created_by
    )];
    let mut facts = vec![format!("priority {}", item.priority)];
    if let Some(o) = &item.owner {
        facts.push(format!("owner {o}"));
    }
    if let Some(d) = &item.due {
        facts.push(format!("due {d}"));
    }
    lines.push(facts.join(" · "));
    if let Some(page) = &link.page {
        lines.push(format!("Incident: {page}"));
    }
    lines.push(
        "Closing this issue closes the action item in Firebreak; reopening it reopens the item."
            .into(),
    );
    lines
}

/// Creates the GitHub issue of `item`: its number (`#12`) and URL.
pub async fn export_github(
    client: &reqwest::Client,
    g: &GithubConfig,
    item: &ActionItemRow,
    link: &Backlink,
) -> Result<(String, String), ExportError> {
    let url = format!(
        "{}/repos/{}/issues",
        g.api_url.trim_end_matches('/'),
        g.repo
    );
    let mut labels = g.labels.clone();
    labels.push(format!("priority:{}", item.priority));
    let body = json!({
        "title": item.title,
        "body": description(item, link).join("\n\n"),
        "labels": labels,
    });
    let answer = send(
        client
            .post(url)
            .bearer_auth(g.token.expose())
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .header("User-Agent", "firebreak")
            .json(&body),
        "GitHub",
    )
    .await?;
    let number = answer["number"]
        .as_i64()
        .ok_or_else(|| ExportError("GitHub answered without an issue number".into()))?;
    let html = answer["html_url"].as_str().unwrap_or_default().to_string();
    Ok((format!("#{number}"), html))
}

/// An Atlassian Document Format document of paragraphs.
fn adf(lines: &[String]) -> Value {
    json!({
        "type": "doc",
        "version": 1,
        "content": lines.iter().map(|l| json!({
            "type": "paragraph",
            "content": [{"type": "text", "text": l}],
        })).collect::<Vec<_>>(),
    })
}

/// Creates the Jira issue of `item`: its key (`OPS-7`) and browse URL.
pub async fn export_jira(
    client: &reqwest::Client,
    j: &JiraConfig,
    item: &ActionItemRow,
    link: &Backlink,
) -> Result<(String, String), ExportError> {
    let site = j.url.trim_end_matches('/');
    let mut labels = j.labels.clone();
    labels.push(format!("incident-{}", item.incident_id));
    let mut fields = json!({
        "project": {"key": j.project},
        "summary": item.title,
        "issuetype": {"name": j.issue_type},
        "description": adf(&description(item, link)),
        "labels": labels,
    });
    if let Some(due) = &item.due {
        fields["duedate"] = json!(due);
    }
    let answer = send(
        client
            .post(format!("{site}/rest/api/3/issue"))
            .basic_auth(&j.email, Some(j.api_token.expose()))
            .header("Accept", "application/json")
            .json(&json!({"fields": fields})),
        "Jira",
    )
    .await?;
    let key = answer["key"]
        .as_str()
        .ok_or_else(|| ExportError("Jira answered without an issue key".into()))?
        .to_string();
    Ok((key.clone(), format!("{site}/browse/{key}")))
}

async fn send(req: reqwest::RequestBuilder, what: &str) -> Result<Value, ExportError> {
    let resp = req
        .send()
        .await
        .map_err(|e| ExportError(format!("{what} is unreachable: {e}")))?;
    let status = resp.status();
    // A tracker's answer is read up to a bound: an issue is small.
    let bytes = read_bounded(resp, 1 << 20)
        .await
        .map_err(|e| ExportError(format!("{what} answered {status} but the body failed: {e}")))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        let text: String = text.chars().take(300).collect();
        return Err(ExportError(format!("{what} answered {status}: {text}")));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ExportError(format!("{what} answered {status} with no JSON: {e}")))
}

async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > max {
            return Err(format!("the answer is over {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under
/// `secret`, compared in constant time (GitHub's `X-Hub-Signature-256`,
/// Jira's `X-Hub-Signature`).
pub fn signature_valid(secret: &str, header: Option<&str>, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let Some(hex) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    firebreak_store::credentials::constant_time_eq(
        expected.as_bytes(),
        hex.to_ascii_lowercase().as_bytes(),
    )
}

/// How long a failed export waits before its next try: `first` (30 s by
/// default), doubling, at most an hour.
pub fn backoff(first: chrono::Duration, attempts: i64) -> chrono::Duration {
    let ms = first
        .num_milliseconds()
        .max(1)
        .saturating_mul(1 << attempts.clamp(0, 12));
    chrono::Duration::milliseconds(ms.min(3_600_000))
}

/// How long one process holds a claimed export.
const CLAIM: chrono::Duration = chrono::Duration::seconds(60);

/// Exports what waits in the outbox until `shutdown`: every `every`, each
/// due item once, by whichever process claims it.
pub async fn run_exporter(
    store: Arc<dyn Store>,
    drafts: Arc<crate::Generator>,
    config: TrackersConfig,
    public_url: Option<String>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        loop {
            let now = Utc::now();
            let item = match store.claim_action_item_export(now, now + CLAIM).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the tracker outbox");
                    break;
                }
            };
            let outcome = export_one(&*store, &client, &config, public_url.as_deref(), &item).await;
            if let ExportOutcome::Failed { error, next_at } = &outcome {
                tracing::warn!(action_item = item.id, tracker = ?item.tracker, %error, retry_at = %next_at, "action item export failed");
            } else {
                tracing::info!(action_item = item.id, tracker = ?item.tracker, "action item exported");
            }
            match store
                .finish_action_item_export(item.id, &outcome, Utc::now())
                .await
            {
                Ok(()) => drafts.refresh_soon(item.incident_id),
                Err(e) => {
                    tracing::warn!(action_item = item.id, error = %e, "cannot record an export")
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
    }
}

/// One export attempt of a claimed item.
pub async fn export_one(
    store: &dyn Store,
    client: &reqwest::Client,
    config: &TrackersConfig,
    public_url: Option<&str>,
    item: &ActionItemRow,
) -> ExportOutcome {
    let failed = |error: String| ExportOutcome::Failed {
        error,
        next_at: Utc::now() + backoff(config.retry.0, item.export_attempts),
    };
    // The overview, not the whole detail: an incident's alerts are not needed.
    let incident_title = match store.incident_overview(item.incident_id).await {
        Ok(d) => d.incident.title,
        Err(e) => return failed(format!("cannot read incident {}: {e}", item.incident_id)),
    };
    let link = Backlink {
        incident_title,
        page: public_url
            .map(|u| format!("{}/incidents/{}", u.trim_end_matches('/'), item.incident_id)),
    };
    let result = match (item.tracker.as_deref(), &config.github, &config.jira) {
        (Some("github"), Some(g), _) => export_github(client, g, item, &link).await,
        (Some("jira"), _, Some(j)) => export_jira(client, j, item, &link).await,
        (Some(t), _, _) => Err(ExportError(format!(
            "the tracker {t:?} is not configured here ([trackers.{t}])"
        ))),
        (None, _, _) => Err(ExportError("no tracker named".into())),
    };
    match result {
        Ok((key, url)) => ExportOutcome::Exported { key, url },
        Err(ExportError(e)) => failed(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn githubs_documented_signature_vector() {
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_valid(
            "It's a Secret to Everybody",
            Some(header),
            b"Hello, World!"
        ));
        assert!(!signature_valid(
            "It's a Secret to Everybody",
            Some(header),
            b"Hello, World?"
        ));
        assert!(!signature_valid("another", Some(header), b"Hello, World!"));
        assert!(!signature_valid(
            "It's a Secret to Everybody",
            None,
            b"Hello, World!"
        ));
        assert!(!signature_valid(
            "It's a Secret to Everybody",
            Some("757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"),
            b"Hello, World!"
        ));
    }

    #[test]
    fn backoff_doubles_to_an_hour() {
        let first = chrono::Duration::seconds(30);
        assert_eq!(backoff(first, 0).num_seconds(), 30);
        assert_eq!(backoff(first, 1).num_seconds(), 60);
        assert_eq!(backoff(first, 20).num_seconds(), 3600);
    }

    #[test]
    fn configuration_is_checked_naming_the_key() {
        let mut c = TrackersConfig {
            default: Some("github".into()),
            ..TrackersConfig::default()
        };
        assert!(c.check().unwrap_err().contains("trackers.default"));
        c.github = Some(GithubConfig {
            api_url: github_api(),
            repo: "acme".into(),
            token: Secret::new("t"),
            webhook_secret: None,
            labels: vec![],
        });
        assert!(c.check().unwrap_err().contains("trackers.github.repo"));
        c.github.as_mut().unwrap().repo = "acme/shop".into();
        assert_eq!(c.check(), Ok(()));
    }
}
