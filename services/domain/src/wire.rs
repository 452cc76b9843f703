//! The JSON bodies Firebreak accepts, over HTTP and on the bus alike, decoded into
//! normalized events. Every error names the field that is wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde::de::{self, DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::alertmanager::{AlertStatus, Webhook};
use crate::events::{
    AlertEvent, DeployEvent, DeployStatus, DeployStrategy, EventKind, GateResult, GateVerdict,
    LogLine,
};
use crate::ids::{content_id, MAX_ID_LEN};
use crate::limits;

/// A body that cannot be accepted, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() || path == "." { String::new() } else { format!("at `{path}`: ") })]
pub struct WireError {
    /// JSON path of the offending value (`alerts[0].startsAt`), `.` for the root.
    pub path: String,
    pub message: String,
}

impl WireError {
    pub(crate) fn at(path: impl Into<String>, message: impl Into<String>) -> WireError {
        WireError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// What one body decodes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Alerts(Vec<AlertEvent>),
    Deploys(Vec<DeployEvent>),
    Gates(Vec<GateResult>),
    Logs(Vec<LogLine>),
}

impl Decoded {
    pub fn kind(&self) -> EventKind {
        match self {
            Decoded::Alerts(_) => EventKind::Alert,
            Decoded::Deploys(_) => EventKind::Deploy,
            Decoded::Gates(_) => EventKind::Gate,
            Decoded::Logs(_) => EventKind::Log,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Decoded::Alerts(v) => v.len(),
            Decoded::Deploys(v) => v.len(),
            Decoded::Gates(v) => v.len(),
            Decoded::Logs(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes a body of the given kind. `received_at` stands in for timestamps a
/// sender left out (deploys, gates and log lines may omit them).
pub fn decode(
    kind: EventKind,
    body: &[u8],
    received_at: DateTime<Utc>,
) -> Result<Decoded, WireError> {
    match kind {
        EventKind::Alert => decode_alertmanager(body).map(Decoded::Alerts),
        EventKind::Deploy => {
            let raw: Vec<RawDeploy> = one_or_many(body)?;
            raw.into_iter()
                .enumerate()
                .map(|(i, d)| {
                    d.normalize(received_at)
                        .map_err(|e| e.within(i, raw_is_array(body)))
                })
                .collect::<Result<_, _>>()
                .map(Decoded::Deploys)
        }
        EventKind::Gate => {
            let raw: Vec<RawGate> = one_or_many(body)?;
            raw.into_iter()
                .enumerate()
                .map(|(i, g)| {
                    g.normalize(received_at)
                        .map_err(|e| e.within(i, raw_is_array(body)))
                })
                .collect::<Result<_, _>>()
                .map(Decoded::Gates)
        }
        EventKind::Log => decode_logs(body, received_at).map(Decoded::Logs),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let mut path = err.path().to_string();
        if path == "?" {
            path = ".".into();
        }
        let inner = err.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else {
            strip_position(&inner.to_string())
        };
        WireError::at(path, message)
    })?;
    de.end()
        .map_err(|e| WireError::at(".", format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// serde_json appends "at line 1 column 42" to data errors; the path says it better.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(idx) => message[..idx].to_string(),
        None => message.to_string(),
    }
}

fn raw_is_array(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// Deploy and gate bodies are one object or an array of them.
fn one_or_many<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, WireError> {
    if raw_is_array(body) {
        let items: Vec<T> = parse(body)?;
        if items.is_empty() {
            return Err(WireError::at(".", "empty array: send at least one event"));
        }
        Ok(items)
    } else {
        Ok(vec![parse(body)?])
    }
}

impl WireError {
    fn within(self, index: usize, in_array: bool) -> WireError {
        if !in_array {
            return self;
        }
        let path = if self.path == "." {
            format!("[{index}]")
        } else {
            format!("[{index}].{}", self.path)
        };
        WireError { path, ..self }
    }
}

/// One Alertmanager webhook, or a JSON array of them (what ingest packs
/// small webhooks that arrive together into; also accepted over HTTP).
fn decode_alertmanager(body: &[u8]) -> Result<Vec<AlertEvent>, WireError> {
    let array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if !array {
        return webhook_events(parse(body)?);
    }
    let webhooks: Vec<Webhook> = parse(body)?;
    let mut events = Vec::new();
    for (i, webhook) in webhooks.into_iter().enumerate() {
        events.extend(webhook_events(webhook).map_err(|e| e.within(i, true))?);
    }
    Ok(events)
}

fn webhook_events(webhook: Webhook) -> Result<Vec<AlertEvent>, WireError> {
    if webhook.version != "4" {
        return Err(WireError::at(
            "version",
            format!("unsupported webhook version {:?}: Firebreak speaks Alertmanager webhook version \"4\"", webhook.version),
        ));
    }
    let mut events = Vec::with_capacity(webhook.alerts.len());
    for (i, alert) in webhook.alerts.into_iter().enumerate() {
        let fingerprint = if alert.fingerprint.is_empty() {
            label_fingerprint(&alert.labels)
        } else {
            alert.fingerprint
        };
        if alert.status == AlertStatus::Resolved && alert.ends_at.is_none() {
            return Err(WireError::at(
                format!("alerts[{i}].endsAt"),
                "a resolved alert needs a real endsAt",
            ));
        }
        limits::check_map(
            &alert.labels,
            &format!("alerts[{i}].labels"),
            limits::MAX_LABELS,
            limits::MAX_LABEL_VALUE,
        )?;
        limits::check_map(
            &alert.annotations,
            &format!("alerts[{i}].annotations"),
            limits::MAX_ANNOTATIONS,
            limits::MAX_ANNOTATION_VALUE,
        )?;
        limits::check_len(
            &fingerprint,
            &format!("alerts[{i}].fingerprint"),
            MAX_ID_LEN,
        )?;
        limits::check_len(
            &alert.generator_url,
            &format!("alerts[{i}].generatorURL"),
            limits::MAX_URL,
        )?;
        let starts = alert.starts_at.to_rfc3339();
        let id = content_id("al", &[&fingerprint, alert.status.as_str(), &starts]);
        events.push(AlertEvent {
            id,
            fingerprint,
            status: alert.status,
            labels: alert.labels,
            annotations: alert.annotations,
            starts_at: alert.starts_at,
            ends_at: alert.ends_at,
            generator_url: alert.generator_url,
            truncated_alerts: webhook.truncated_alerts,
        });
    }
    Ok(events)
}

/// Senders other than Alertmanager may leave out the fingerprint; derive one from
/// the label set, as Alertmanager does, so the same alert always matches itself.
fn label_fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut parts = Vec::with_capacity(labels.len() * 2);
    for (k, v) in labels {
        parts.push(k.as_str());
        parts.push(v.as_str());
    }
    content_id("fp", &parts)
}

fn check_id(id: Option<String>, path: &str) -> Result<Option<String>, WireError> {
    match id {
        Some(id) if id.trim().is_empty() => {
            Err(WireError::at(path, "must not be empty when given"))
        }
        Some(id) if id.len() > MAX_ID_LEN => Err(WireError::at(
            path,
            format!("is {} bytes long; at most {MAX_ID_LEN}", id.len()),
        )),
        other => Ok(other),
    }
}

fn required(value: String, path: &str) -> Result<String, WireError> {
    if value.trim().is_empty() {
        Err(WireError::at(path, "must not be empty"))
    } else {
        Ok(value)
    }
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeploy {
    id: Option<String>,
    service: String,
    environment: Option<String>,
    version: String,
    previous_version: Option<String>,
    #[serde(default = "default_deploy_status")]
    status: DeployStatus,
    strategy: Option<DeployStrategy>,
    #[serde(default, deserialize_with = "string_or_number")]
    step: Option<String>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    commit: Option<String>,
    url: Option<String>,
    actor: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
    /// When the (single) deployed commit was made.
    committed_at: Option<DateTime<Utc>>,
    /// The deployed commits, each with when it was made.
    #[serde(default)]
    commits: Vec<RawCommit>,
    /// Commit times as a list (the shape a normalized event is queued in).
    #[serde(default)]
    commit_times: Vec<DateTime<Utc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommit {
    #[serde(default)]
    #[allow(dead_code)]
    sha: Option<String>,
    at: DateTime<Utc>,
    #[serde(default)]
    #[allow(dead_code)]
    message: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    author: Option<String>,
}

/// At most this many commits per deploy event.
pub const MAX_COMMITS: usize = 1000;

fn default_deploy_status() -> DeployStatus {
    DeployStatus::Succeeded
}

impl RawDeploy {
    fn normalize(self, received_at: DateTime<Utc>) -> Result<DeployEvent, WireError> {
        let service = required(self.service, "service")?;
        let version = required(self.version, "version")?;
        let id = match check_id(self.id, "id")? {
            Some(id) => id,
            None => content_id(
                "dp",
                &[
                    &service,
                    self.environment.as_deref().unwrap_or(""),
                    &version,
                    self.status.as_str(),
                    self.step.as_deref().unwrap_or(""),
                    &opt_time(self.started_at),
                    &opt_time(self.finished_at),
                ],
            ),
        };
        let started_at = self.started_at.or(self.finished_at).unwrap_or(received_at);
        if self.commits.len() + self.commit_times.len() > MAX_COMMITS {
            return Err(WireError::at(
                "commits",
                format!(
                    "has {} entries; at most {MAX_COMMITS}",
                    self.commits.len() + self.commit_times.len()
                ),
            ));
        }
        let mut commit_times: Vec<DateTime<Utc>> = self.committed_at.into_iter().collect();
        commit_times.extend(self.commits.iter().map(|c| c.at));
        commit_times.extend(self.commit_times);
        commit_times.sort_unstable();
        commit_times.dedup();
        Ok(DeployEvent {
            id,
            service,
            environment: self.environment,
            version,
            previous_version: self.previous_version,
            status: self.status,
            strategy: self.strategy,
            step: self.step,
            started_at,
            finished_at: self.finished_at,
            commit: self.commit,
            url: self.url,
            actor: self.actor,
            flags: self.flags,
            commit_times,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGate {
    id: Option<String>,
    service: String,
    environment: Option<String>,
    version: Option<String>,
    deploy_id: Option<String>,
    gate: String,
    metric: Option<String>,
    comparison: Option<String>,
    threshold: Option<f64>,
    baseline: Option<f64>,
    observed: Option<f64>,
    window: Option<String>,
    #[serde(default, deserialize_with = "string_or_number")]
    step: Option<String>,
    verdict: GateVerdict,
    evaluated_at: Option<DateTime<Utc>>,
}

impl RawGate {
    fn normalize(self, received_at: DateTime<Utc>) -> Result<GateResult, WireError> {
        let service = required(self.service, "service")?;
        let gate = required(self.gate, "gate")?;
        let id = match check_id(self.id, "id")? {
            Some(id) => id,
            None => content_id(
                "gt",
                &[
                    &service,
                    self.environment.as_deref().unwrap_or(""),
                    self.version.as_deref().unwrap_or(""),
                    self.deploy_id.as_deref().unwrap_or(""),
                    &gate,
                    self.metric.as_deref().unwrap_or(""),
                    self.step.as_deref().unwrap_or(""),
                    self.verdict.as_str(),
                    &opt_time(self.evaluated_at),
                ],
            ),
        };
        Ok(GateResult {
            id,
            service,
            environment: self.environment,
            version: self.version,
            deploy_id: self.deploy_id,
            gate,
            metric: self.metric,
            comparison: self.comparison,
            threshold: self.threshold,
            baseline: self.baseline,
            observed: self.observed,
            window: self.window,
            step: self.step,
            verdict: self.verdict,
            evaluated_at: self.evaluated_at.unwrap_or(received_at),
        })
    }
}

/// Canary steps arrive as `3` from some tools and `"25%"` from others.
fn string_or_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Step {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(Option::<Step>::deserialize(deserializer)?.map(|s| match s {
        Step::Text(t) => t,
        Step::Number(n) => n.to_string(),
    }))
}

/// Firebreak's own log body, or the Loki push JSON that Promtail, Alloy and
/// Vector can send.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogs {
    // Loki push shape.
    streams: Option<Vec<LokiStream>>,
    // Firebreak's shape.
    service: Option<String>,
    environment: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    lines: Option<Vec<RawLine>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    id: Option<String>,
    at: Option<DateTime<Utc>>,
    service: Option<String>,
    level: Option<String>,
    message: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct LokiStream {
    stream: BTreeMap<String, String>,
    values: Vec<LokiValue>,
}

/// `["<unix nanoseconds>", "<line>"]`, optionally with a third element holding
/// structured metadata, which Firebreak keeps as labels.
struct LokiValue {
    nanos: String,
    line: String,
    metadata: BTreeMap<String, String>,
}

impl<'de> Deserialize<'de> for LokiValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LokiValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("[\"<unix nanoseconds>\", \"<log line>\"]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LokiValue, A::Error> {
                let nanos: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let line: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let metadata: BTreeMap<String, String> = seq.next_element()?.unwrap_or_default();
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(LokiValue {
                    nanos,
                    line,
                    metadata,
                })
            }
        }
        deserializer.deserialize_seq(V)
    }
}

const SERVICE_LABELS: [&str; 4] = ["service", "service_name", "app", "job"];
const ENV_LABELS: [&str; 2] = ["env", "environment"];

fn first_label(labels: &BTreeMap<String, String>, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| labels.get(*n))
        .filter(|v| !v.is_empty())
        .cloned()
}

fn decode_logs(body: &[u8], received_at: DateTime<Utc>) -> Result<Vec<LogLine>, WireError> {
    let raw: RawLogs = parse(body)?;
    match (raw.streams, raw.lines) {
        (Some(streams), None) => {
            let mut out = Vec::new();
            for (si, stream) in streams.into_iter().enumerate() {
                let path = format!("streams[{si}].stream");
                limits::check_map(&stream.stream, &path, limits::MAX_LABELS, limits::MAX_LABEL_VALUE)?;
                let service = first_label(&stream.stream, &SERVICE_LABELS).ok_or_else(|| {
                    WireError::at(
                        &path,
                        "no service label: add one of `service`, `service_name`, `app` or `job` to the stream",
                    )
                })?;
                let environment = first_label(&stream.stream, &ENV_LABELS);
                let level = first_label(&stream.stream, &["level", "detected_level"]);
                // One label set per stream, shared by its lines (not copied).
                let shared = Arc::new(stream.stream);
                for (vi, value) in stream.values.into_iter().enumerate() {
                    let at = parse_unix_nanos(&value.nanos).ok_or_else(|| {
                        WireError::at(
                            format!("streams[{si}].values[{vi}][0]"),
                            format!("{:?} is not a timestamp in unix nanoseconds", value.nanos),
                        )
                    })?;
                    limits::check_len(&value.line, &format!("streams[{si}].values[{vi}][1]"), limits::MAX_LOG_LINE)?;
                    limits::check_map(
                        &value.metadata,
                        &format!("streams[{si}].values[{vi}][2]"),
                        limits::MAX_LABELS,
                        limits::MAX_LABEL_VALUE,
                    )?;
                    let id = content_id("lg", &[&service, &value.nanos, &value.line]);
                    out.push(LogLine {
                        id,
                        service: service.clone(),
                        environment: environment.clone(),
                        at,
                        level: level.clone(),
                        message: value.line,
                        labels: shared.clone(),
                        metadata: value.metadata,
                    });
                }
            }
            Ok(out)
        }
        (None, Some(lines)) => {
            limits::check_map(&raw.labels, "labels", limits::MAX_LABELS, limits::MAX_LABEL_VALUE)?;
            let shared = Arc::new(raw.labels);
            let mut out = Vec::with_capacity(lines.len());
            for (i, line) in lines.into_iter().enumerate() {
                let service = line
                    .service
                    .or_else(|| raw.service.clone())
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| {
                        WireError::at(format!("lines[{i}]"), "no service: set `service` on the body or on the line")
                    })?;
                limits::check_len(&line.message, &format!("lines[{i}].message"), limits::MAX_LOG_LINE)?;
                let id = match check_id(line.id, &format!("lines[{i}].id"))? {
                    Some(id) => id,
                    None => content_id("lg", &[&service, &opt_time(line.at), &line.message]),
                };
                limits::check_map(
                    &line.labels,
                    &format!("lines[{i}].labels"),
                    limits::MAX_LABELS,
                    limits::MAX_LABEL_VALUE,
                )?;
                out.push(LogLine {
                    id,
                    service,
                    environment: raw.environment.clone(),
                    at: line.at.unwrap_or(received_at),
                    level: line.level,
                    message: line.message,
                    labels: shared.clone(),
                    metadata: line.labels,
                });
            }
            Ok(out)
        }
        (Some(_), Some(_)) => Err(WireError::at(".", "send either `streams` (Loki push) or `lines`, not both")),
        (None, None) => Err(WireError::at(
            ".",
            "no log lines: send `{\"service\": …, \"lines\": [{\"message\": …}]}` or a Loki push body with `streams`",
        )),
    }
}

fn parse_unix_nanos(s: &str) -> Option<DateTime<Utc>> {
    let nanos: i64 = s.parse().ok()?;
    let secs = nanos.div_euclid(1_000_000_000);
    let sub = u32::try_from(nanos.rem_euclid(1_000_000_000)).ok()?;
    Utc.timestamp_opt(secs, sub).single()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 5, 0, 0)
            .single()
            .expect("valid time")
    }

    const FIXTURE: &str = include_str!("../../../tests/fixtures/alertmanager_webhook_sample.json");
    const RESOLVED: &str =
        include_str!("../../../tests/fixtures/alertmanager_webhook_resolved_sample.json");

    #[test]
    fn decodes_real_alertmanager_body() {
        let Decoded::Alerts(alerts) =
            decode(EventKind::Alert, FIXTURE.as_bytes(), now()).expect("decodes")
        else {
            panic!("not alerts")
        };
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(a.fingerprint, "69c2e62f0b0aec37");
        assert_eq!(a.status, AlertStatus::Firing);
        assert_eq!(a.ends_at, None, "0001-01-01 means not ended");
        assert_eq!(
            a.starts_at.timestamp_subsec_nanos(),
            898_740_626,
            "nanoseconds kept"
        );
        assert_eq!(a.alertname(), "HighErrorRate");
    }

    #[test]
    fn resolved_alert_has_its_real_end_and_a_different_id() {
        let Decoded::Alerts(firing) =
            decode(EventKind::Alert, FIXTURE.as_bytes(), now()).expect("decodes")
        else {
            panic!()
        };
        let Decoded::Alerts(resolved) =
            decode(EventKind::Alert, RESOLVED.as_bytes(), now()).expect("decodes")
        else {
            panic!()
        };
        assert_eq!(resolved[0].status, AlertStatus::Resolved);
        assert!(resolved[0].ends_at.is_some());
        assert_eq!(resolved[0].fingerprint, firing[0].fingerprint);
        assert_ne!(resolved[0].id, firing[0].id);
    }

    #[test]
    fn same_body_twice_gives_same_ids() {
        let a = decode(EventKind::Alert, FIXTURE.as_bytes(), now()).expect("decodes");
        let b = decode(EventKind::Alert, FIXTURE.as_bytes(), now()).expect("decodes");
        assert_eq!(a, b);
    }

    #[test]
    fn unknown_alertmanager_fields_are_accepted() {
        let mut v: serde_json::Value = serde_json::from_str(FIXTURE).expect("json");
        v["somethingNew"] = serde_json::json!({"x": 1});
        v["alerts"][0]["newField"] = serde_json::json!(true);
        let body = serde_json::to_vec(&v).expect("json");
        assert!(decode(EventKind::Alert, &body, now()).is_ok());
    }

    #[test]
    fn missing_field_is_named_with_its_path() {
        let mut v: serde_json::Value = serde_json::from_str(FIXTURE).expect("json");
        v["alerts"][0]
            .as_object_mut()
            .expect("object")
            .remove("startsAt");
        let body = serde_json::to_vec(&v).expect("json");
        let err = decode(EventKind::Alert, &body, now()).expect_err("must fail");
        assert_eq!(err.path, "alerts[0]");
        assert!(err.message.contains("startsAt"), "{err}");
    }

    #[test]
    fn malformed_json_is_reported_as_such() {
        let err = decode(EventKind::Alert, b"{\"version\": ", now()).expect_err("must fail");
        assert!(err.message.starts_with("malformed JSON"), "{err}");
        assert_eq!(
            err.path, "version",
            "the value being read when the body ended"
        );
        let truncated = decode(EventKind::Alert, b"{", now()).expect_err("must fail");
        assert!(!truncated.to_string().contains('?'), "{truncated}");
    }

    #[test]
    fn deploy_one_or_many_and_strictness() {
        let one = br#"{"service":"checkout","version":"v2","environment":"prod","started_at":"2026-11-23T13:55:00Z"}"#;
        let Decoded::Deploys(d) = decode(EventKind::Deploy, one, now()).expect("decodes") else {
            panic!()
        };
        assert_eq!(d[0].status, DeployStatus::Succeeded);
        assert!(d[0].id.starts_with("dp-"));

        let many = br#"[{"service":"a","version":"1"},{"service":"b","version":"2","id":"ci-77","step":3}]"#;
        let Decoded::Deploys(d) = decode(EventKind::Deploy, many, now()).expect("decodes") else {
            panic!()
        };
        assert_eq!(d[1].id, "ci-77");
        assert_eq!(d[1].step.as_deref(), Some("3"));
        assert_eq!(d[0].started_at, now(), "missing time means received time");

        let typo =
            br#"[{"service":"a","version":"1"},{"service":"b","version":"2","enviroment":"prod"}]"#;
        let err = decode(EventKind::Deploy, typo, now()).expect_err("unknown field");
        assert_eq!(err.path, "[1].enviroment");

        let missing = br#"{"version":"1"}"#;
        let err = decode(EventKind::Deploy, missing, now()).expect_err("missing service");
        assert!(err.message.contains("missing field `service`"), "{err}");
    }

    #[test]
    fn commit_times_survive_the_queue() {
        let raw = br#"{"service":"a","version":"1","committed_at":"2026-11-23T10:00:00Z",
                       "commits":[{"sha":"abc","at":"2026-11-23T09:00:00Z","message":"fix"}]}"#;
        let Decoded::Deploys(d) = decode(EventKind::Deploy, raw, now()).expect("decodes") else {
            panic!()
        };
        assert_eq!(d[0].commit_times.len(), 2);
        // What ingest queues is the normalized event; the engine decodes it again.
        let queued = serde_json::to_vec(&d[0]).expect("encodes");
        let Decoded::Deploys(again) = decode(EventKind::Deploy, &queued, now()).expect("decodes")
        else {
            panic!()
        };
        assert_eq!(again[0].commit_times, d[0].commit_times);
        assert_eq!(again[0].id, d[0].id);
    }

    #[test]
    fn gate_verdict_is_checked() {
        let bad = br#"{"service":"a","gate":"error-rate","verdict":"maybe"}"#;
        let err = decode(EventKind::Gate, bad, now()).expect_err("bad verdict");
        assert_eq!(err.path, "verdict");
        let ok = br#"{"service":"a","gate":"error-rate","verdict":"fail","observed":0.07,"threshold":0.01}"#;
        assert!(decode(EventKind::Gate, ok, now()).is_ok());
    }

    #[test]
    fn loki_push_and_own_log_shapes() {
        let loki = br#"{"streams":[{"stream":{"service":"checkout","env":"prod","level":"error"},
            "values":[["1763874000000000000","GET /pay 500 in 31ms"],["1763874000000000001","x",{"trace_id":"abc"}]]}]}"#;
        let Decoded::Logs(lines) = decode(EventKind::Log, loki, now()).expect("decodes") else {
            panic!()
        };
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].service, "checkout");
        assert_eq!(lines[0].environment.as_deref(), Some("prod"));
        assert_eq!(
            lines[1].metadata.get("trace_id").map(String::as_str),
            Some("abc")
        );

        let own = br#"{"service":"checkout","lines":[{"message":"boom","level":"error"}]}"#;
        let Decoded::Logs(lines) = decode(EventKind::Log, own, now()).expect("decodes") else {
            panic!()
        };
        assert_eq!(lines[0].at, now());

        let no_service = br#"{"streams":[{"stream":{"foo":"bar"},"values":[["1","x"]]}]}"#;
        let err = decode(EventKind::Log, no_service, now()).expect_err("no service");
        assert_eq!(err.path, "streams[0].stream");
    }
}
