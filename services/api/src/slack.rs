//! Slack chat-ops: the `/firebreak` slash command and the Approve / Deny
//! buttons. Every request is verified with the signing secret as Slack
//! specifies (`v0=` HMAC-SHA256 over `v0:{timestamp}:{raw body}`, constant-time
//! comparison, at most 5 minutes old) before anything is parsed. Destructive
//! Every command checks the role of the Slack user who typed it (`slack.roles`);
//! every command, allowed or
//! refused, is in the audit trail with the Slack user id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use firebreak_domain::access::{Identity, Role, Via};
use firebreak_domain::playbook::FlagState;
use firebreak_domain::response::Stage;
use firebreak_remediation::incidents::IncidentChange;
use firebreak_remediation::slack::{escape, SlackClient};
use firebreak_remediation::{CommandError, Request, RequestOptions};
use firebreak_store::{ActionFilter, ActionStatus, IncidentFilter, NewAudit, Store, StoreError};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::{ApiError, AppState};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/slack/commands", post(commands))
        .route("/slack/interactions", post(interactions))
}

/// Requests older (or newer) than this are refused as replays.
const MAX_SKEW_SECS: i64 = 300;

/// Checks Slack's signature headers against the raw body.
pub fn verify(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), &'static str> {
    let ts = headers
        .get("x-slack-request-timestamp")
        .and_then(|v| v.to_str().ok())
        .ok_or("missing X-Slack-Request-Timestamp")?;
    let ts_num: i64 = ts
        .trim()
        .parse()
        .map_err(|_| "bad X-Slack-Request-Timestamp")?;
    // abs_diff: a timestamp near i64::MIN cannot wrap into the window.
    if now.abs_diff(ts_num) > MAX_SKEW_SECS.unsigned_abs() {
        return Err("request timestamp is more than 5 minutes away: refused as a replay");
    }
    let sig = headers
        .get("x-slack-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or("missing X-Slack-Signature")?;
    let hex = sig
        .strip_prefix("v0=")
        .ok_or("signature is not a v0 signature")?;
    let given = firebreak_store::credentials::from_hex(hex).ok_or("signature is not hex")?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| "bad signing secret")?;
    mac.update(b"v0:");
    mac.update(ts.as_bytes());
    mac.update(b":");
    mac.update(body);
    // Constant-time comparison.
    mac.verify_slice(&given)
        .map_err(|_| "signature does not match")?;
    first_time(&given, ts_num, now)
}

/// Signed requests seen within the skew window, by signature: a request is
/// applied once, a replay of it within the window is refused. Only requests
/// with a valid signature are remembered, and entries leave as their
/// timestamps fall out of the window, so the memory is bounded by Slack's
/// real traffic over ten minutes (and capped at [`MAX_REMEMBERED`] besides).
/// One process remembers its own requests.
static SEEN: std::sync::LazyLock<std::sync::Mutex<HashMap<Vec<u8>, i64>>> =
    std::sync::LazyLock::new(Default::default);
const MAX_REMEMBERED: usize = 100_000;

fn first_time(signature: &[u8], ts: i64, now: i64) -> Result<(), &'static str> {
    let mut seen = SEEN.lock().map_err(|_| "replay memory unavailable")?;
    if seen.contains_key(signature) {
        return Err("this signed request was already applied: refused as a replay");
    }
    if seen.len() >= MAX_REMEMBERED {
        seen.retain(|_, t| now.abs_diff(*t) <= MAX_SKEW_SECS.unsigned_abs());
    }
    if seen.len() >= MAX_REMEMBERED {
        return Err(
            "too many Slack requests in five minutes to tell replays apart: try again shortly",
        );
    }
    seen.insert(signature.to_vec(), ts);
    Ok(())
}

fn unauthorized(why: &str) -> Response {
    tracing::warn!(reason = why, "Slack request refused");
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "unauthorized", "message": format!("not a valid Slack request: {why}")})),
    )
        .into_response()
}

fn slack_parts(state: &AppState) -> Result<(Arc<dyn Store>, Arc<SlackClient>), ApiError> {
    let store = state.store.clone();
    let slack = state.slack.clone().ok_or_else(|| {
        ApiError::NotFound("Slack is not configured: set FIREBREAK_SLACK_SIGNING_SECRET".into())
    })?;
    Ok((store, slack))
}

/// A request Slack signed, its form read, before any handler runs: 404
/// without Slack configured; the refusal Slack is sent for a missing, wrong
/// or stale signature; 400 for a body that is not a form.
struct Signed {
    slack: Arc<SlackClient>,
    form: HashMap<String, String>,
}

impl axum::extract::FromRequest<AppState> for Signed {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, Response> {
        let (_, slack) = slack_parts(state).map_err(IntoResponse::into_response)?;
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let form = signed_form(&slack, &headers, &body)?;
        Ok(Signed { slack, form })
    }
}

/// The form of a request Slack signed; `Err` is the answer to send instead:
/// a refusal when the signature is missing, wrong or stale (checked before
/// the body is read), 400 when the body is not a form.
#[allow(clippy::result_large_err)]
fn signed_form(
    slack: &SlackClient,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<HashMap<String, String>, Response> {
    if let Some(refusal) = check(slack, headers, body) {
        return Err(refusal);
    }
    serde_urlencoded::from_bytes(body).map_err(|e| {
        ApiError::BadRequest {
            field: None,
            message: format!("not a form body: {e}"),
        }
        .into_response()
    })
}

/// Verifies the request; `Some` is the refusal to send.
fn check(slack: &SlackClient, headers: &HeaderMap, body: &[u8]) -> Option<Response> {
    let Some(secret) = &slack.config().signing_secret else {
        return Some(unauthorized("no signing secret configured"));
    };
    verify(secret.expose(), headers, body, Utc::now().timestamp())
        .err()
        .map(unauthorized)
}

fn ephemeral(text: impl Into<String>) -> Response {
    Json(json!({"response_type": "ephemeral", "text": text.into()})).into_response()
}

fn in_channel(text: impl Into<String>) -> Response {
    Json(json!({"response_type": "in_channel", "text": text.into()})).into_response()
}

const USAGE: &str = "*Firebreak* — `/firebreak <command>`:\n\
• `list` — open incidents\n\
• `status <id>` — one incident\n\
• `declare <service> <title>` — declare an incident by hand (editors)\n\
• `ack <id>` — acknowledge it (editors)\n\
• `sev <id> <level>` — its severity, e.g. `sev 12 SEV2` (editors)\n\
• `status <id> investigating|identified|monitoring` — its stage (editors; `resolved`: operators)\n\
• `commander <id> @person` — who commands the response (editors)\n\
• `resolve <id>` — resolve it now\n\
• `note <id> <text>` — add a note to its timeline\n\
• `killswitch <flag> off|on [provider]` — set a kill switch (operators)\n\
• `rollback <service> [environment]` — roll back to the last good deploy (operators)\n\
• `pause` / `resume` — automation (operators)\n\
• `rollout <id>` — where a guarded rollout stands\n\
• `rollout start <flag> <service> 5,10,25,50,100 [hold]` — roll a built-in flag out, each step held `hold` (default 1h) (operators)\n\
• `rollout pause|resume|abort <id>`, `rollout restart <id> [step]` — steer it (operators)\n\
• `postmortem <id>` — the draft's summary and link\n\
• `cause <id> <version|deploy id> yes|no|clear` — whether a suspect change caused the incident (editors)";

struct Caller {
    id: String,
    name: String,
    role: Role,
    /// The Firebreak user this Slack user is (`slack.people`), if any.
    person: Option<String>,
}

impl Caller {
    fn new(slack: &SlackClient, id: String, name: String, role: Role) -> Caller {
        let person = slack.config().people.get(&id).cloned();
        Caller {
            id,
            name,
            role,
            person,
        }
    }

    /// Who acts: the mapped person (`user:<name>`, one principal with their
    /// web sign-in and tokens), else the Slack user.
    fn actor(&self) -> String {
        match &self.person {
            Some(name) => firebreak_domain::access::user_principal(name),
            None => format!("slack:{}", self.id),
        }
    }

    fn identity(&self) -> Identity {
        Identity::person(self.actor(), Via::Slack, self.role)
    }
}

/// The role a command needs (`rollout` by its sub-command: looking is for everyone).
fn needs(command: &str, sub: Option<&str>, third: Option<&str>) -> Role {
    match command {
        // `status <id>` looks; `status <id> <stage>` changes (resolving: operators).
        "status" if third.is_some_and(|s| s.eq_ignore_ascii_case("resolved")) => Role::Operator,
        "status" if third.is_some() => Role::Editor,
        "ack" | "note" | "cause" | "sev" | "commander" | "declare" => Role::Editor,
        "killswitch" | "rollback" | "pause" | "resume" | "resolve" => Role::Operator,
        "rollout" if sub.is_some_and(|s| s.parse::<i64>().is_err() && !s.starts_with('#')) => {
            Role::Operator
        }
        _ => Role::Viewer,
    }
}

async fn commands(
    State(state): State<AppState>,
    Signed { slack, form }: Signed,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let id = form.get("user_id").cloned().unwrap_or_default();
    if id.is_empty() {
        return Ok(ephemeral("Slack sent no user_id; nothing done."));
    }
    let role = slack.role(&id).await;
    let name = form.get("user_name").cloned().unwrap_or_default();
    let caller = Caller::new(&slack, id, name, role);
    let text = form.get("text").cloned().unwrap_or_default();
    let response_url = form.get("response_url").cloned();
    let words: Vec<&str> = text.split_whitespace().collect();
    let command = words
        .first()
        .map(|w| w.to_ascii_lowercase())
        .unwrap_or_default();
    let needed = needs(&command, words.get(1).copied(), words.get(2).copied());
    let allowed = caller.role >= needed;
    let audit = NewAudit::by(
        caller.actor(),
        if allowed {
            "slack_command"
        } else {
            "slack_command_refused"
        },
        json!({"text": text, "user_name": caller.name, "channel": form.get("channel_id"), "role": caller.role}),
    );
    store.record(&[audit], &[]).await?;
    if !allowed {
        return Ok(ephemeral(format!(
            ":no_entry: `{command}` needs the {needed} role; you ({}) are {}. Ask an admin to map your Slack user or one of your user groups in `slack.roles`. Nothing was changed.",
            caller.id, caller.role
        )));
    }
    let r = match (command.as_str(), &words[1.min(words.len())..]) {
        ("" | "help", _) => ephemeral(USAGE),
        ("list", _) => list(store.as_ref()).await?,
        ("status", [id]) => status(&state, store.as_ref(), id).await?,
        ("ack", [id]) => ack(&state, id, &caller).await?,
        ("status", [id, stage]) => {
            let change_to = IncidentChange {
                stage: Some(stage.to_string()),
                ..IncidentChange::default()
            };
            change(&state, id, &caller, change_to).await?
        }
        ("sev", [id, level]) => {
            let change_to = IncidentChange {
                severity: Some(level.to_string()),
                ..IncidentChange::default()
            };
            change(&state, id, &caller, change_to).await?
        }
        ("commander", [id, who]) => {
            let Some(person) = mentioned(&slack, who) else {
                return Ok(ephemeral(format!(
                    "Name the commander with an @mention (`commander {} @ana`).",
                    escape(id)
                )));
            };
            let change_to = IncidentChange {
                commander: Some(person),
                ..IncidentChange::default()
            };
            change(&state, id, &caller, change_to).await?
        }
        ("declare", [service, title @ ..]) if !title.is_empty() => {
            declare(&state, service, after_two_words(&text), &caller).await?
        }
        ("resolve", [id]) => resolve(&state, id, &caller).await?,
        ("note", [id, rest @ ..]) if !rest.is_empty() => {
            add_note(&state, id, after_two_words(&text), &caller).await?
        }
        ("killswitch", [flag, state_word, rest @ ..]) if rest.len() <= 1 => {
            let wanted = match state_word.to_ascii_lowercase().as_str() {
                "off" => Some(FlagState::Off),
                "on" => Some(FlagState::On),
                _ => None,
            };
            match wanted {
                None => ephemeral(format!("Use `killswitch {} off` or `on`.", escape(flag))),
                Some(state_word) => {
                    let request = Request::KillSwitch {
                        flag: flag.to_string(),
                        provider: rest.first().map(|p| p.to_string()),
                        environment: None,
                        state: state_word,
                    };
                    ask(&state, &slack, &caller, request, response_url).await?
                }
            }
        }
        ("rollback", [service, rest @ ..]) if rest.len() <= 1 => {
            let request = Request::Rollback {
                service: service.to_string(),
                environment: rest.first().map(|e| e.to_string()),
                provider: None,
            };
            ask(&state, &slack, &caller, request, response_url).await?
        }
        ("pause", []) | ("resume", []) => {
            let paused = command == "pause";
            state
                .remediation
                .clone()
                .set_paused(&caller.identity(), paused, Some("from Slack"))
                .await?;
            in_channel(if paused {
                format!(":double_vertical_bar: <@{}> paused automation: playbooks now hold every action for a human.", caller.id)
            } else {
                format!(":arrow_forward: <@{}> resumed automation.", caller.id)
            })
        }
        ("postmortem", [id]) => postmortem(&state, store.as_ref(), id).await?,
        ("rollout", args) if !args.is_empty() => {
            rollout(&state, store.as_ref(), args, &caller).await?
        }
        ("cause", [id, change, word]) => {
            cause(&state, store.as_ref(), id, change, word, &caller).await?
        }
        (
            known @ ("status" | "ack" | "resolve" | "note" | "killswitch" | "rollback"
            | "postmortem" | "pause" | "resume" | "rollout" | "cause" | "sev"
            | "commander" | "declare"),
            _,
        ) => ephemeral(format!("`{known}` needs different arguments.\n{USAGE}")),
        (other, _) => ephemeral(format!("I don't know `{}`.\n{USAGE}", escape(other))),
    };
    Ok(r)
}

/// `/firebreak cause <id> <version|deploy id> yes|no|clear`.
async fn cause(
    state: &AppState,
    store: &dyn Store,
    raw: &str,
    change: &str,
    word: &str,
    caller: &Caller,
) -> Result<Response, ApiError> {
    let Some(id) = incident_id(raw) else {
        return Ok(ephemeral(
            "Use `cause <incident id> <version or deploy id> yes|no|clear`.",
        ));
    };
    let cause = match word.to_ascii_lowercase().as_str() {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        "clear" | "unknown" => None,
        _ => {
            return Ok(ephemeral(
                "End with `yes` (it caused the incident), `no` or `clear`.",
            ))
        }
    };
    let detail = match store.incident(id).await {
        Ok(d) => d,
        Err(firebreak_store::StoreError::NotFound) => {
            return Ok(ephemeral(format!("There is no incident {id}.")))
        }
        Err(e) => return Err(e.into()),
    };
    let matching: Vec<&firebreak_domain::DeployEvent> = detail
        .changes
        .iter()
        .filter(|d| d.id == change || d.version == change)
        .collect();
    let deploy = match matching.as_slice() {
        [one] => one.id.clone(),
        [] => {
            return Ok(ephemeral(format!(
                "Incident {id} has no suspect change `{}`; its changes: {}.",
                escape(change),
                detail
                    .changes
                    .iter()
                    .map(|d| format!(
                        "`{}` ({} {})",
                        escape(&d.id),
                        escape(&d.service),
                        escape(&d.version)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        _ => {
            return Ok(ephemeral(format!(
                "Several changes of incident {id} are version `{}`: name one by its deploy id.",
                escape(change)
            )))
        }
    };
    state
        .remediation
        .clone()
        .mark_cause(&caller.identity(), id, &deploy, cause, Some("from Slack"))
        .await?;
    Ok(in_channel(format!(
        "<@{}> marked change `{}` as {} of incident #{id}.",
        caller.id,
        escape(&deploy),
        match cause {
            Some(true) => "the cause",
            Some(false) => "not the cause",
            None => "of unknown part",
        }
    )))
}

/// `/firebreak rollout …`: look at, start and steer guarded rollouts.
async fn rollout(
    state: &AppState,
    store: &dyn Store,
    args: &[&str],
    caller: &Caller,
) -> Result<Response, ApiError> {
    use firebreak_remediation::rollouts::RolloutCommand;
    let line = |r: &firebreak_domain::rollout::Rollout| {
        format!(
            "rollout #{} of `{}` ({}): {} at {}%{}{}",
            r.id,
            escape(&r.flag),
            escape(&r.plan.service),
            r.status.as_str(),
            r.percent(),
            r.step
                .map(|s| format!(", step {} of {}", s + 1, r.plan.steps.len()))
                .unwrap_or_default(),
            r.waiting
                .as_deref()
                .or(r.reason.as_deref())
                .map(|w| format!(" — {}", escape(w)))
                .unwrap_or_default()
        )
    };
    let id = |raw: &str| incident_id(raw);
    let answer = |result: Result<
        (
            firebreak_domain::rollout::Rollout,
            Option<firebreak_store::ActionRow>,
        ),
        firebreak_remediation::CommandError,
    >,
                  verb: &str| match result {
        Ok((r, _)) => in_channel(format!("<@{}> {verb} {}", caller.id, line(&r))),
        Err(e) => ephemeral(format!(
            ":warning: {}. Nothing was changed.",
            escape(&e.to_string())
        )),
    };
    let command = match args {
        [raw] => {
            let Some(id) = id(raw) else {
                return Ok(ephemeral("Use `rollout <id>`, e.g. `rollout 3`."));
            };
            return Ok(match store.rollout(id).await {
                Ok(r) => ephemeral(line(&r)),
                Err(firebreak_store::StoreError::NotFound) => {
                    ephemeral(format!("There is no rollout {id}."))
                }
                Err(e) => return Err(e.into()),
            });
        }
        ["start", flag, service, percents, rest @ ..] if rest.len() <= 1 => {
            let hold = rest.first().copied().unwrap_or("1h");
            let steps: Result<Vec<Value>, String> = percents
                .split(',')
                .map(|p| {
                    p.trim()
                        .parse::<u8>()
                        .map(|p| json!({"percent": p, "hold": hold}))
                        .map_err(|_| format!("{p:?} is not a percentage"))
                })
                .collect();
            let plan = steps.and_then(|steps| {
                serde_json::from_value::<firebreak_domain::rollout::RolloutPlan>(
                    json!({"service": service, "steps": steps}),
                )
                .map_err(|e| e.to_string())
            });
            return Ok(match plan {
                Err(e) => ephemeral(format!(":warning: {}. Nothing was changed.", escape(&e))),
                Ok(plan) => answer(
                    state
                        .remediation
                        .clone()
                        .start_rollout(&caller.identity(), flag, plan)
                        .await,
                    "started",
                ),
            });
        }
        ["pause", raw] => id(raw).map(|i| (i, RolloutCommand::Pause, "paused")),
        ["resume", raw] => id(raw).map(|i| (i, RolloutCommand::Resume, "resumed")),
        ["abort", raw] => id(raw).map(|i| (i, RolloutCommand::Abort, "aborted")),
        ["restart", raw, rest @ ..] if rest.len() <= 1 => match rest
            .first()
            .map(|s| s.parse::<usize>())
        {
            None => id(raw).map(|i| (i, RolloutCommand::Restart { step: 1 }, "restarted")),
            Some(Ok(step)) => id(raw).map(|i| (i, RolloutCommand::Restart { step }, "restarted")),
            Some(Err(_)) => None,
        },
        _ => None,
    };
    let Some((id, command, verb)) = command else {
        return Ok(ephemeral(format!(
            "That is not a rollout command.\n{USAGE}"
        )));
    };
    Ok(answer(
        state
            .remediation
            .clone()
            .rollout_command(&caller.identity(), id, command, Some("from Slack"))
            .await,
        verb,
    ))
}

fn incident_id(raw: &str) -> Option<i64> {
    raw.trim_start_matches('#').parse().ok().filter(|i| *i > 0)
}

/// What follows a command's first two words, as typed (a title, a note).
fn after_two_words(text: &str) -> &str {
    text.splitn(3, char::is_whitespace)
        .nth(2)
        .unwrap_or("")
        .trim()
}

/// The answer to an argument that should have named an incident.
fn not_an_incident(raw: &str) -> Response {
    ephemeral(format!("`{}` is not an incident id.", escape(raw)))
}

async fn list(store: &dyn Store) -> Result<Response, ApiError> {
    let open = store
        .list_incidents(&IncidentFilter {
            status: Some("open".into()),
            limit: 20,
            ..IncidentFilter::default()
        })
        .await?;
    if open.is_empty() {
        return Ok(ephemeral(":white_check_mark: No open incidents."));
    }
    let now = Utc::now();
    let lines: Vec<String> = open
        .iter()
        .map(|i| {
            format!(
                "• *#{}* {} — open {}",
                i.id,
                escape(&i.title),
                firebreak_postmortem::context::fmt_duration(now - i.opened_at)
            )
        })
        .collect();
    Ok(ephemeral(format!("*Open incidents*\n{}", lines.join("\n"))))
}

async fn status(state: &AppState, store: &dyn Store, raw: &str) -> Result<Response, ApiError> {
    let Some(id) = incident_id(raw) else {
        return Ok(not_an_incident(raw));
    };
    let detail = match store.incident(id).await {
        Ok(d) => d,
        Err(StoreError::NotFound) => return Ok(ephemeral(format!("There is no incident #{id}."))),
        Err(e) => return Err(e.into()),
    };
    let i = &detail.incident;
    let firing = detail
        .alerts
        .iter()
        .filter(|a| a.status == "firing")
        .count();
    let actions = store
        .list_actions(&ActionFilter {
            incident_id: Some(id),
            limit: 5,
            ..ActionFilter::default()
        })
        .await?;
    let scale = state.remediation.clone().severities().clone();
    let mut text = format!(
        "*#{id} {}* — {}, {}\nOpened {}{}\nAlerts firing: {firing} of {}",
        escape(&i.title),
        Stage::of(&i.status, i.response.stage.as_deref()).as_str(),
        scale
            .of(
                i.response.declared_severity.as_deref(),
                i.severity.as_deref()
            )
            .unwrap_or("no severity"),
        i.opened_at.format("%Y-%m-%d %H:%M UTC"),
        i.resolved_at
            .map(|r| format!(", resolved {}", r.format("%H:%M UTC")))
            .unwrap_or_default(),
        detail.alerts.len()
    );
    if let Some(by) = &i.response.acknowledged_by {
        text.push_str(&format!("\nAcknowledged by {}", escape(by)));
    }
    if let Some(c) = &i.response.commander {
        text.push_str(&format!("\nCommander: {}", escape(c)));
    }
    if let Some(d) = detail.changes.iter().max_by_key(|d| d.started_at) {
        text.push_str(&format!(
            "\nLatest suspect change: {} {} at {}",
            escape(&d.service),
            escape(&d.version),
            d.started_at.format("%H:%M UTC")
        ));
    }
    for a in &actions {
        text.push_str(&format!(
            "\n• action #{} {} — {}",
            a.id,
            escape(&a.spec.describe),
            a.status.as_str()
        ));
    }
    text.push_str(&page_link(state, id));
    Ok(ephemeral(text))
}

async fn ack(state: &AppState, raw: &str, caller: &Caller) -> Result<Response, ApiError> {
    let Some(id) = incident_id(raw) else {
        return Ok(not_an_incident(raw));
    };
    let remediation = state.remediation.clone();
    match remediation
        .acknowledge_incident(&caller.identity(), id)
        .await
    {
        Ok(true) => Ok(in_channel(format!(
            ":eyes: <@{}> acknowledged incident #{id}.{}",
            caller.id,
            page_link(state, id)
        ))),
        Ok(false) => {
            let row = remediation.store().incident_overview(id).await?.incident;
            Ok(ephemeral(format!(
                "Incident #{id} was acknowledged already by {}; nothing changed.",
                escape(row.response.acknowledged_by.as_deref().unwrap_or("someone"))
            )))
        }
        Err(CommandError::NotFound(_)) => Ok(ephemeral(format!("There is no incident #{id}."))),
        Err(e) => Err(e.into()),
    }
}

/// ` <url>` to the incident's page when `slack.public_url` is configured.
fn page_link(state: &AppState, id: i64) -> String {
    state
        .slack
        .as_ref()
        .and_then(|s| s.config().public_url.clone())
        .map(|base| {
            format!(
                " <{}/incidents/{id}|Open #{id}>",
                base.trim_end_matches('/')
            )
        })
        .unwrap_or_default()
}

/// A Slack mention (`<@U123>` or `<@U123|name>`) as a Firebreak identity:
/// the mapped person (`slack.people`), else the Slack user.
fn mentioned(slack: &SlackClient, word: &str) -> Option<String> {
    let inner = word.strip_prefix("<@")?.strip_suffix('>')?;
    let id = inner.split('|').next()?;
    if id.is_empty() || id.len() > 32 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return None;
    }
    Some(match slack.config().people.get(id) {
        Some(person) => firebreak_domain::access::user_principal(person),
        None => format!("slack:{id}"),
    })
}

/// Severity, stage or commander from Slack, through the core.
async fn change(
    state: &AppState,
    raw: &str,
    caller: &Caller,
    change: IncidentChange,
) -> Result<Response, ApiError> {
    let Some(id) = incident_id(raw) else {
        return Ok(not_an_incident(raw));
    };
    let remediation = state.remediation.clone();
    let scale = remediation.severities();
    match remediation
        .update_incident(&caller.identity(), id, &change)
        .await
    {
        Ok(row) => Ok(in_channel(format!(
            ":pencil2: <@{}> updated incident #{id}: {}, {}{}{}.{}",
            caller.id,
            scale
                .of(
                    row.response.declared_severity.as_deref(),
                    row.severity.as_deref()
                )
                .unwrap_or("no severity"),
            Stage::of(&row.status, row.response.stage.as_deref()).as_str(),
            row.response
                .commander
                .as_deref()
                .map(|c| format!(", commander {}", escape(c)))
                .unwrap_or_default(),
            row.response
                .acknowledged_by
                .as_deref()
                .map(|a| format!(", acknowledged by {}", escape(a)))
                .unwrap_or_default(),
            page_link(state, id)
        ))),
        Err(CommandError::NotFound(_)) => Ok(ephemeral(format!("There is no incident #{id}."))),
        Err(CommandError::BadRequest { message, .. } | CommandError::Conflict(message)) => {
            Ok(ephemeral(format!("{}; nothing changed.", escape(&message))))
        }
        Err(e) => Err(e.into()),
    }
}

/// `declare <service> <title>`: a person opens an incident from Slack.
async fn declare(
    state: &AppState,
    service: &str,
    title: &str,
    caller: &Caller,
) -> Result<Response, ApiError> {
    match state
        .remediation
        .clone()
        .declare_incident(&caller.identity(), title, service, None, None, None)
        .await
    {
        Ok(row) => Ok(in_channel(format!(
            ":rotating_light: <@{}> declared incident #{} on {}: {}.{}",
            caller.id,
            row.id,
            escape(service),
            escape(&row.title),
            page_link(state, row.id)
        ))),
        Err(CommandError::BadRequest { message, .. }) => Ok(ephemeral(format!(
            "{}; nothing declared.",
            escape(&message)
        ))),
        Err(e) => Err(e.into()),
    }
}

async fn resolve(state: &AppState, raw: &str, caller: &Caller) -> Result<Response, ApiError> {
    let Some(id) = incident_id(raw) else {
        return Ok(not_an_incident(raw));
    };
    match state
        .remediation
        .clone()
        .resolve_incident(&caller.identity(), id)
        .await
    {
        Ok(true) => Ok(in_channel(format!(
            ":white_check_mark: <@{}> resolved incident #{id}.",
            caller.id
        ))),
        Ok(false) => Ok(ephemeral(format!(
            "Incident #{id} is not open (or does not exist); nothing changed."
        ))),
        Err(CommandError::NotFound(_)) => Ok(ephemeral(format!("There is no incident #{id}."))),
        Err(e) => Err(e.into()),
    }
}

async fn add_note(
    state: &AppState,
    raw: &str,
    note: &str,
    caller: &Caller,
) -> Result<Response, ApiError> {
    let Some(id) = incident_id(raw) else {
        return Ok(not_an_incident(raw));
    };
    match state
        .remediation
        .clone()
        .add_note(&caller.identity(), id, note)
        .await
    {
        Ok(_) => Ok(ephemeral(format!(":memo: Added to the timeline of #{id}."))),
        Err(CommandError::NotFound(_)) => Ok(ephemeral(format!("There is no incident #{id}."))),
        Err(CommandError::BadRequest { .. }) => Ok(ephemeral("Notes are 1 to 3,000 characters.")),
        Err(e) => Err(e.into()),
    }
}

/// A person's request from Slack: the same guarded path as REST and
/// playbooks; the answer says what the guardrails decided, and the outcome
/// is posted to `response_url` once the executor is done.
async fn ask(
    state: &AppState,
    slack: &Arc<SlackClient>,
    caller: &Caller,
    request: Request,
    response_url: Option<String>,
) -> Result<Response, ApiError> {
    let remediation = state.remediation.clone();
    let opts = RequestOptions {
        reason: Some(format!(
            "requested in Slack by {} ({})",
            caller.name, caller.id
        )),
        ..RequestOptions::default()
    };
    let row = match remediation.request(&caller.identity(), request, opts).await {
        Ok(row) => row,
        Err(CommandError::BadRequest { message, .. }) => {
            return Ok(ephemeral(format!("Nothing done: {}", escape(&message))))
        }
        Err(CommandError::Conflict(message))
        | Err(CommandError::NotFound(message))
        | Err(CommandError::Forbidden(message)) => {
            return Ok(ephemeral(format!("Nothing done: {}", escape(&message))))
        }
        Err(e) => return Err(e.into()),
    };
    let describe = escape(&row.spec.describe);
    let text = match row.status {
        ActionStatus::Pending => {
            if let Some(url) = response_url {
                let store = state.store.clone();
                let slack = slack.clone();
                let id = row.id;
                tokio::spawn(async move { follow_up(store, slack, id, url).await });
            }
            format!(
                ":hammer_and_wrench: <@{}> asked to {describe} (action #{}); I'll post the outcome here.",
                caller.id, row.id
            )
        }
        ActionStatus::Held => format!(
            ":raised_hand: <@{}> asked to {describe} (action #{}): held for a human, {}. Approve it with the buttons in the incident thread or POST /api/v1/actions/{}/approve.",
            caller.id,
            row.id,
            escape(row.reason.as_deref().unwrap_or("")),
            row.id
        ),
        ActionStatus::DryRun => format!(
            ":test_tube: <@{}> asked to {describe} (action #{}): dry run ({}), nothing was called.",
            caller.id,
            row.id,
            escape(row.reason.as_deref().unwrap_or(""))
        ),
        ActionStatus::Suppressed => format!(
            ":zzz: <@{}> asked to {describe} (action #{}): not repeated ({}).",
            caller.id,
            row.id,
            escape(row.reason.as_deref().unwrap_or(""))
        ),
        other => format!(
            ":x: <@{}> asked to {describe} (action #{}): {} ({}).",
            caller.id,
            row.id,
            other.as_str(),
            escape(row.reason.as_deref().unwrap_or(""))
        ),
    };
    Ok(in_channel(text))
}

/// Waits (up to two minutes) for an action to finish and tells the channel.
async fn follow_up(store: Arc<dyn Store>, slack: Arc<SlackClient>, id: i64, response_url: String) {
    for _ in 0..240 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(a) = store.action(id).await else {
            continue;
        };
        let done = match a.status {
            ActionStatus::Succeeded => format!(
                ":white_check_mark: {} — done{}.",
                escape(&a.spec.describe),
                if a.result
                    .as_ref()
                    .is_some_and(|r| r["verified"] == Value::Bool(true))
                {
                    ", verified"
                } else {
                    ""
                }
            ),
            ActionStatus::Failed => format!(
                ":x: {} — failed: {}",
                escape(&a.spec.describe),
                escape(a.reason.as_deref().unwrap_or("unknown"))
            ),
            _ => continue,
        };
        if let Err(e) = slack
            .respond(
                &response_url,
                &json!({"response_type": "in_channel", "text": done}),
            )
            .await
        {
            tracing::warn!(action = id, error = %e, "cannot post the outcome to Slack");
        }
        return;
    }
}

async fn postmortem(state: &AppState, store: &dyn Store, raw: &str) -> Result<Response, ApiError> {
    let Some(id) = incident_id(raw) else {
        return Ok(not_an_incident(raw));
    };
    let Some(pm) = store.postmortem(id).await? else {
        return Ok(ephemeral(format!(
            "Incident #{id} has no postmortem draft yet (drafts are written when it resolves, or with POST /api/v1/incidents/{id}/postmortem/regenerate)."
        )));
    };
    let title = pm
        .markdown
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .unwrap_or("Postmortem");
    let facts: Vec<&str> = pm
        .markdown
        .lines()
        .filter(|l| l.starts_with("| Impact window") || l.starts_with("| Time to"))
        .collect();
    let link = state
        .slack
        .as_ref()
        .and_then(|s| s.config().public_url.clone())
        .map(|u| format!("{}/incidents/{id}/postmortem", u.trim_end_matches('/')))
        .unwrap_or_else(|| format!("/incidents/{id}/postmortem"));
    let markdown = pm.markdown.clone();
    let lint =
        crate::offload::text(move || firebreak_postmortem::lint::check(&markdown, &[]).total)
            .await?;
    Ok(ephemeral(format!(
        "*{}* — {} (revision {})\n{}\nBlameless check: {}\n<{link}|Read the draft>",
        escape(title),
        pm.status,
        pm.revision,
        facts
            .iter()
            .map(|l| l.trim_matches('|').replace(" | ", ": ").trim().to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        if lint == 0 {
            "no findings".to_string()
        } else {
            format!("{lint} findings")
        },
    )))
}

/// Block Kit buttons: Approve / Deny on a held action. Two clicks decide once;
/// the message is replaced to show who decided.
async fn interactions(
    State(state): State<AppState>,
    Signed { slack, form }: Signed,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let payload: Value = form
        .get("payload")
        .and_then(|p| serde_json::from_str(p).ok())
        .ok_or_else(|| ApiError::BadRequest {
            field: Some("payload".into()),
            message: "missing or not JSON".into(),
        })?;
    let user_id = payload["user"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let role = slack.role(&user_id).await;
    let name = payload["user"]["username"]
        .as_str()
        .or(payload["user"]["name"].as_str())
        .unwrap_or_default()
        .to_string();
    let caller = Caller::new(&slack, user_id, name, role);
    let response_url = payload["response_url"].as_str().map(str::to_string);
    let Some(action) = payload["actions"].as_array().and_then(|a| a.first()) else {
        return Ok(StatusCode::OK.into_response());
    };
    let approve = match action["action_id"].as_str() {
        Some("firebreak_approve") => true,
        Some("firebreak_deny") => false,
        _ => return Ok(StatusCode::OK.into_response()),
    };
    let Some(id) = action["value"].as_str().and_then(|v| v.parse::<i64>().ok()) else {
        return Ok(StatusCode::OK.into_response());
    };
    let allowed = caller.role >= Role::Operator;
    let audit = NewAudit {
        at: Utc::now(),
        actor: caller.actor(),
        event: if allowed {
            "slack_button"
        } else {
            "slack_button_refused"
        }
        .into(),
        action_id: Some(id),
        incident_id: None,
        playbook: None,
        playbook_version: None,
        detail: json!({"button": action["action_id"], "user_name": caller.name}),
    };
    store.record(&[audit], &[]).await?;
    let reply = if !allowed {
        json!({"response_type": "ephemeral", "replace_original": false,
               "text": format!(":no_entry: <@{}>, approving or denying needs the operator role; you are {}. Nothing changed.", caller.id, caller.role)})
    } else {
        match state
            .remediation
            .clone()
            .decide(&caller.identity(), id, approve, Some("from Slack"), false)
            .await
        {
            Ok(row) => json!({"replace_original": true, "text": format!(
                "{} {} by <@{}>: {}",
                if approve { ":white_check_mark:" } else { ":no_entry_sign:" },
                if approve { "Approved" } else { "Denied" },
                caller.id,
                escape(&row.spec.describe)
            )}),
            Err(CommandError::Conflict(m))
            | Err(CommandError::NotFound(m))
            | Err(CommandError::Forbidden(m)) => {
                json!({"response_type": "ephemeral", "replace_original": false, "text": format!("Nothing changed: {}", escape(&m))})
            }
            Err(e) => return Err(e.into()),
        }
    };
    if let Some(url) = response_url {
        let slack = slack.clone();
        tokio::spawn(async move {
            if let Err(e) = slack.respond(&url, &reply).await {
                tracing::warn!(error = %e, "cannot update the Slack message");
            }
        });
    }
    Ok(StatusCode::OK.into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Slack's published example (api.slack.com, "Verifying requests from Slack").
    #[test]
    fn slacks_published_example_verifies() {
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let mut h = HeaderMap::new();
        h.insert("x-slack-request-timestamp", "1531420618".parse().unwrap());
        h.insert(
            "x-slack-signature",
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
                .parse()
                .unwrap(),
        );
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        assert_eq!(verify(secret, &h, body.as_bytes(), 1531420618 + 10), Ok(()));
        assert!(verify(secret, &h, body.as_bytes(), 1531420618 + 11)
            .unwrap_err()
            .contains("already applied"));
        assert!(verify(secret, &h, body.as_bytes(), 1531420618 + 301)
            .unwrap_err()
            .contains("replay"));
        assert!(
            verify(secret, &h, format!("{body}x").as_bytes(), 1531420618)
                .unwrap_err()
                .contains("does not match")
        );
        assert!(verify("other", &h, body.as_bytes(), 1531420618).is_err());
        h.remove("x-slack-signature");
        assert!(verify(secret, &h, body.as_bytes(), 1531420618)
            .unwrap_err()
            .contains("missing"));
    }

    #[test]
    fn timestamps_far_away_cannot_wrap_into_the_window() {
        let mut h = HeaderMap::new();
        let now = 1_700_000_000i64;
        for ts in [
            i64::MIN,
            now.wrapping_sub(i64::MAX),
            i64::MAX,
            now - 301,
            now + 301,
        ] {
            h.insert("x-slack-request-timestamp", ts.to_string().parse().unwrap());
            h.insert(
                "x-slack-signature",
                format!("v0={}", "00".repeat(32)).parse().unwrap(),
            );
            assert!(
                verify("secret", &h, b"x", now)
                    .unwrap_err()
                    .contains("5 minutes"),
                "{ts}"
            );
        }
    }
}
