//! Slack outbound: the Web API calls Firebreak makes (chat.postMessage,
//! usergroups.users.list) and the notifier that announces incidents in one
//! thread each. The notifier follows the timeline from the store, apart from
//! remediation: a Slack outage delays messages, never actions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use firebreak_domain::timeline::kind;
use firebreak_store::{OutboxClaim, SlackClaim, Store, TimelineEvent};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use firebreak_domain::access::Role;

use crate::providers::{client, SlackConfig};

/// Why a Slack call failed, and when trying again makes sense.
#[derive(Debug, Clone)]
pub enum SlackError {
    /// Rate limited or unavailable: try again after this long.
    Retry(Duration, String),
    /// Slack refused (bad channel, missing scope, …): trying again will not help.
    Refused(String),
    /// The announcement is claimed by a post in flight elsewhere.
    InFlight,
}

impl std::fmt::Display for SlackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlackError::Retry(d, m) => write!(f, "{m} (retry in {}s)", d.as_secs()),
            SlackError::Refused(m) => f.write_str(m),
            SlackError::InFlight => f.write_str("claimed by a post in flight"),
        }
    }
}

pub struct SlackClient {
    config: SlackConfig,
    http: reqwest::Client,
    groups: Mutex<HashMap<String, (Instant, Vec<String>)>>,
}

impl SlackClient {
    pub fn new(config: SlackConfig) -> SlackClient {
        SlackClient {
            config,
            http: client(Duration::from_secs(10)),
            groups: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &SlackConfig {
        &self.config
    }

    async fn call(
        &self,
        method: &str,
        body: Option<&Value>,
        query: &[(&str, &str)],
    ) -> Result<Value, SlackError> {
        let token = self.config.bot_token.as_ref().ok_or_else(|| {
            SlackError::Refused("no Slack bot token configured (FIREBREAK_SLACK_BOT_TOKEN)".into())
        })?;
        let url = format!("{}/{method}", self.config.api_url.trim_end_matches('/'));
        let req = match body {
            Some(b) => self.http.post(url).json(b),
            None => self.http.get(url).query(query),
        };
        let resp = req.bearer_auth(token.expose()).send().await.map_err(|e| {
            SlackError::Retry(
                Duration::from_secs(5),
                format!(
                    "Slack {method}: {}",
                    if e.is_timeout() {
                        "timed out"
                    } else {
                        "cannot connect"
                    }
                ),
            )
        })?;
        let status = resp.status().as_u16();
        if status == 429 {
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(30);
            return Err(SlackError::Retry(
                Duration::from_secs(wait.min(600)),
                format!("Slack {method}: rate limited"),
            ));
        }
        if status >= 500 {
            return Err(SlackError::Retry(
                Duration::from_secs(5),
                format!("Slack {method}: HTTP {status}"),
            ));
        }
        let v: Value = resp.json().await.map_err(|_| {
            SlackError::Retry(
                Duration::from_secs(5),
                format!("Slack {method}: answer is not JSON"),
            )
        })?;
        if v["ok"] != Value::Bool(true) {
            return Err(SlackError::Refused(format!(
                "Slack {method} refused: {}",
                v["error"].as_str().unwrap_or("unknown error")
            )));
        }
        Ok(v)
    }

    /// Posts a message; returns its `ts`.
    pub async fn post(
        &self,
        channel: &str,
        text: &str,
        blocks: Option<Value>,
        thread_ts: Option<&str>,
    ) -> Result<(String, String), SlackError> {
        let mut body = json!({"channel": channel, "text": text, "unfurl_links": false});
        if let Some(b) = blocks {
            body["blocks"] = b;
        }
        if let Some(t) = thread_ts {
            body["thread_ts"] = json!(t);
        }
        let v = self.call("chat.postMessage", Some(&body), &[]).await?;
        Ok((
            v["channel"].as_str().unwrap_or(channel).to_string(),
            v["ts"].as_str().unwrap_or("").to_string(),
        ))
    }

    /// The role of a Slack user: the highest of their own mapping in
    /// `slack.roles` and those of the user groups they are in (a group is
    /// keyed by its id, `S…`), else `slack.default_role`. The older
    /// `allowed_users` and `allowed_groups` map to operator.
    pub async fn role(&self, user: &str) -> Role {
        let mut best = self.config.default_role;
        if let Some(r) = self.config.roles.get(user) {
            best = best.max(*r);
        }
        if self.config.allowed_users.iter().any(|u| u == user) {
            best = best.max(Role::Operator);
        }
        let groups: Vec<(String, Role)> = self
            .config
            .roles
            .iter()
            .filter(|(k, _)| k.starts_with('S'))
            .map(|(k, r)| (k.clone(), *r))
            .chain(
                self.config
                    .allowed_groups
                    .iter()
                    .map(|g| (g.clone(), Role::Operator)),
            )
            .collect();
        for (group, role) in groups {
            if role > best && self.group_members(&group).await.iter().any(|u| u == user) {
                best = role;
            }
        }
        best
    }

    async fn group_members(&self, group: &str) -> Vec<String> {
        let mut cache = self.groups.lock().await;
        if let Some((at, members)) = cache.get(group) {
            if at.elapsed() < Duration::from_secs(300) {
                return members.clone();
            }
        }
        match self
            .call("usergroups.users.list", None, &[("usergroup", group)])
            .await
        {
            Ok(v) => {
                let members: Vec<String> = v["users"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|u| u.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                cache.insert(group.to_string(), (Instant::now(), members.clone()));
                members
            }
            Err(e) => {
                tracing::warn!(group, error = %e, "cannot read Slack user group members; treating as none");
                Vec::new()
            }
        }
    }

    /// Posts to a `response_url` (a later answer to a command or a button).
    pub async fn respond(&self, response_url: &str, body: &Value) -> Result<(), SlackError> {
        let resp = self
            .http
            .post(response_url)
            .json(body)
            .send()
            .await
            .map_err(|_| {
                SlackError::Retry(
                    Duration::from_secs(2),
                    "response_url: cannot connect".into(),
                )
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(SlackError::Refused(format!(
                "response_url answered HTTP {}",
                resp.status().as_u16()
            )))
        }
    }
}

/// Timeline kinds announced in an incident's thread.
pub const ANNOUNCED: &[&str] = &[
    kind::INCIDENT_OPENED,
    kind::INCIDENT_REOPENED,
    kind::ACTION_EXECUTED,
    kind::ACTION_HELD,
    kind::ACTION_FAILED,
    kind::ACTION_REVERTED,
    kind::ACTION_APPROVED,
    kind::ACTION_DENIED,
    kind::INCIDENT_RESOLVED,
];

const CURSOR: &str = "slack_cursor";

/// A claimed announcement not posted after this long was left by a process
/// that stopped mid-way (a post gives up after 10 s): another takes it over.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// The message for one timeline entry; held actions get Approve / Deny buttons.
pub fn message(e: &TimelineEvent, public_url: Option<&str>) -> (String, Option<Value>) {
    let icon = match e.kind.as_str() {
        k if k == kind::INCIDENT_OPENED || k == kind::INCIDENT_REOPENED => ":rotating_light:",
        k if k == kind::INCIDENT_RESOLVED => ":white_check_mark:",
        k if k == kind::ACTION_EXECUTED => ":hammer_and_wrench:",
        k if k == kind::ACTION_HELD => ":raised_hand:",
        k if k == kind::ACTION_FAILED => ":x:",
        _ => ":information_source:",
    };
    let link = public_url
        .map(|u| {
            format!(
                " <{}/incidents/{}|#{}>",
                u.trim_end_matches('/'),
                e.incident_id,
                e.incident_id
            )
        })
        .unwrap_or_else(|| format!(" #{}", e.incident_id));
    let text = format!("{icon} {}{link}", escape(&e.summary));
    if e.kind != kind::ACTION_HELD {
        return (text, None);
    }
    let Some(action) = e
        .ref_id
        .strip_prefix("action:")
        .and_then(|r| r.split(':').next())
    else {
        return (text, None);
    };
    let blocks = json!([
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "actions", "block_id": format!("firebreak_action_{action}"), "elements": [
            {"type": "button", "action_id": "firebreak_approve", "style": "primary", "value": action,
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": "firebreak_deny", "style": "danger", "value": action,
             "text": {"type": "plain_text", "text": "Deny"}},
        ]},
    ]);
    (text, Some(blocks))
}

/// Slack's mrkdwn needs &, < and > escaped; anything else is shown as written.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Announces new timeline entries in one thread per incident until `shutdown`.
/// Each entry is claimed in the store before it is posted, so several
/// processes announce it once.
pub async fn run_notifier(
    store: Arc<dyn Store>,
    slack: Arc<SlackClient>,
    shutdown: CancellationToken,
) {
    let Some(channel) = slack.config().channel.clone() else {
        return;
    };
    let mut cursor = match start_cursor(store.as_ref()).await {
        Some(c) => c,
        None => return,
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let events = match store.timeline_since(cursor, ANNOUNCED, 50).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "Slack notifier cannot read the timeline");
                Vec::new()
            }
        };
        let mut stalled = None;
        for e in &events {
            match announce(store.as_ref(), &slack, &channel, e).await {
                Ok(()) => {
                    cursor = e.seq;
                    backoff = Duration::from_secs(1);
                }
                Err(SlackError::Refused(m)) => {
                    tracing::error!(incident = e.incident_id, error = %m, "Slack refused a message; skipping it");
                    cursor = e.seq;
                }
                Err(SlackError::Retry(wait, m)) => {
                    tracing::warn!(incident = e.incident_id, error = %m, retry_in_s = wait.as_secs(), "Slack unavailable; will retry");
                    stalled = Some(wait.max(backoff));
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    break;
                }
                Err(SlackError::InFlight) => {
                    // Another process is posting it, or one that stopped
                    // did: the thread keeps its order, so wait for it.
                    tracing::debug!(
                        incident = e.incident_id,
                        seq = e.seq,
                        "Slack announcement claimed elsewhere; looking again shortly"
                    );
                    stalled = Some(Duration::from_secs(2));
                    break;
                }
            }
        }
        if let Err(e) = store.put_setting(CURSOR, &cursor.to_string()).await {
            tracing::warn!(error = %e, "cannot save the Slack cursor");
        }
        let wait = stalled.unwrap_or(Duration::from_millis(500));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn start_cursor(store: &dyn Store) -> Option<i64> {
    if let Ok(Some(c)) = store.setting(CURSOR).await {
        if let Ok(c) = c.parse() {
            return Some(c);
        }
    }
    // First start: announce from now on, not the whole history.
    let mut cursor = 0;
    loop {
        match store.timeline_since(cursor, ANNOUNCED, 1000).await {
            Ok(page) if page.is_empty() => break,
            Ok(page) => cursor = page.last().map_or(cursor, |e| e.seq),
            Err(e) => {
                tracing::error!(error = %e, "Slack notifier cannot read the timeline; not starting");
                return None;
            }
        }
    }
    Some(cursor)
}

async fn announce(
    store: &dyn Store,
    slack: &SlackClient,
    channel: &str,
    e: &TimelineEvent,
) -> Result<(), SlackError> {
    let thread = store
        .slack_thread(e.incident_id)
        .await
        .map_err(|err| SlackError::Retry(Duration::from_secs(2), err.to_string()))?;
    let now = Utc::now();
    let lease = OutboxClaim {
        at: now,
        stale_before: now - chrono::Duration::from_std(CLAIM_LEASE).unwrap_or_default(),
    };
    let claim = store
        .claim_slack_message(e.seq, e.incident_id, lease)
        .await
        .map_err(|err| SlackError::Retry(Duration::from_secs(2), err.to_string()))?;
    match claim {
        SlackClaim::Ours => {}
        SlackClaim::Posted => return Ok(()),
        SlackClaim::InFlight => return Err(SlackError::InFlight),
    }
    let (text, blocks) = message(e, slack.config().public_url.as_deref());
    let (post_channel, thread_ts) = match &thread {
        Some((c, ts)) => (c.as_str(), Some(ts.as_str())),
        None => (channel, None),
    };
    match slack.post(post_channel, &text, blocks, thread_ts).await {
        Ok((c, ts)) => {
            if let Err(err) = store.slack_message_posted(e.seq, &c, &ts).await {
                tracing::warn!(error = %err, "cannot record the Slack message");
            }
            Ok(())
        }
        Err(err) => {
            // Release the claim so the retry (here or elsewhere) can post it.
            if matches!(err, SlackError::Retry(..)) {
                if let Err(release) = store.release_slack_message(e.seq).await {
                    tracing::warn!(error = %release, "cannot release the Slack claim; the message may be skipped");
                }
            }
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thread messages link to the incident's web page, not its JSON.
    #[test]
    fn messages_link_to_the_incident_page() {
        let e = TimelineEvent {
            seq: 1,
            incident_id: 7,
            at: chrono::Utc::now(),
            kind: kind::INCIDENT_OPENED.to_string(),
            source: "alertmanager".into(),
            summary: "opened".into(),
            ref_id: "opened:7".into(),
        };
        let (text, _) = message(&e, Some("https://firebreak.example.com/"));
        assert!(
            text.ends_with("<https://firebreak.example.com/incidents/7|#7>"),
            "{text}"
        );
        let (text, _) = message(&e, None);
        assert!(text.ends_with(" #7"), "{text}");
    }
}
