//! flagd's own conformance suite (open-feature/flagd-testbed, vendored in
//! `tests/conformance/flagd-testbed`) run against Firebreak's OFREP endpoint.
//!
//! A small gherkin reader turns every scenario, and every example row of a
//! scenario outline, into one case. A case imports nothing itself: it is
//! answered by a Firebreak that imported the case's flag file (the evaluator
//! suite's `testkit-flags.json`; the provider suite's `flags/*.json` merged as
//! the testbed's launchpad merges them, or the file its `selector` option
//! names) with the case's bucketing (`@fractional-v1` cases on a Firebreak with
//! `flags.fractional = "v1"`). "When the flag was evaluated" makes two OFREP
//! calls, single and bulk, each read as an OpenFeature OFREP provider reads
//! it (a missing `value` is the caller's default, a value of the wrong type is
//! TYPE_MISMATCH); every "Then" must hold for both.
//!
//! Cases an OFREP endpoint cannot express are listed with the reason, never
//! silently dropped; a step the reader does not know fails the case.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use firebreak_tests::{client, Firebreak, Options};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------- gherkin

#[derive(Debug, Clone)]
struct Step {
    text: String,
    table: Vec<Vec<String>>,
}

#[derive(Debug, Default)]
struct Examples {
    tags: Vec<String>,
    rows: Vec<Vec<String>>, // the first row is the header
}

#[derive(Debug, Default)]
struct Scenario {
    name: String,
    tags: Vec<String>,
    steps: Vec<Step>,
    examples: Vec<Examples>,
    outline: bool,
}

#[derive(Debug, Default)]
struct Feature {
    tags: Vec<String>,
    background: Vec<Step>,
    scenarios: Vec<Scenario>,
}

/// A table cell with gherkin's escapes (`\|`, `\n`, `\\`) undone.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('|') => cell.push('|'),
                Some('n') => cell.push('\n'),
                Some('\\') => cell.push('\\'),
                Some(other) => {
                    cell.push('\\');
                    cell.push(other);
                }
                None => cell.push('\\'),
            },
            '|' => out.push(std::mem::take(&mut cell).trim().to_string()),
            c => cell.push(c),
        }
    }
    out
}

fn parse_feature(text: &str) -> Feature {
    enum At {
        Nothing,
        Background,
        Scenario,
        Examples,
    }
    let mut f = Feature::default();
    let mut pending_tags: Vec<String> = Vec::new();
    let mut at = At::Nothing;
    // A doc string (between `"""` or ``` lines): free text, a feature's
    // description or a step's argument; none of the steps run here takes one.
    let mut in_doc = false;
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with("\"\"\"") || line.starts_with("```") {
            in_doc = !in_doc;
            continue;
        }
        if in_doc || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('@') {
            pending_tags.extend(
                line.split_whitespace()
                    .take_while(|t| t.starts_with('@'))
                    .map(str::to_string),
            );
            continue;
        }
        let keyword = line.split(':').next().unwrap_or("");
        match keyword {
            "Feature" => f.tags = std::mem::take(&mut pending_tags),
            "Background" => at = At::Background,
            "Scenario" | "Scenario Outline" | "Scenario Template" | "Example" => {
                f.scenarios.push(Scenario {
                    name: line[keyword.len() + 1..].trim().to_string(),
                    tags: std::mem::take(&mut pending_tags),
                    outline: keyword != "Scenario" && keyword != "Example",
                    ..Scenario::default()
                });
                at = At::Scenario;
            }
            "Examples" | "Scenarios" => {
                let s = f.scenarios.last_mut().expect("Examples inside a scenario");
                s.examples.push(Examples {
                    tags: std::mem::take(&mut pending_tags),
                    rows: Vec::new(),
                });
                at = At::Examples;
            }
            _ if line.starts_with('|') => {
                let row = cells(line);
                match at {
                    At::Examples => f
                        .scenarios
                        .last_mut()
                        .and_then(|s| s.examples.last_mut())
                        .expect("examples")
                        .rows
                        .push(row),
                    At::Scenario => f
                        .scenarios
                        .last_mut()
                        .and_then(|s| s.steps.last_mut())
                        .expect("a step before its table")
                        .table
                        .push(row),
                    At::Background => f
                        .background
                        .last_mut()
                        .expect("a step before its table")
                        .table
                        .push(row),
                    At::Nothing => panic!("a table outside a scenario: {line}"),
                }
            }
            _ => {
                let Some((kw, rest)) = line.split_once(' ') else {
                    panic!("cannot read gherkin line {line:?}");
                };
                assert!(
                    ["Given", "When", "Then", "And", "But", "*"].contains(&kw),
                    "cannot read gherkin line {line:?}"
                );
                let step = Step {
                    text: rest.trim().to_string(),
                    table: Vec::new(),
                };
                match at {
                    At::Background => f.background.push(step),
                    At::Scenario => f.scenarios.last_mut().expect("scenario").steps.push(step),
                    _ => panic!("a step outside a scenario: {line}"),
                }
            }
        }
    }
    f
}

/// One runnable example: its steps with the outline's placeholders filled.
struct Case {
    id: String,
    tags: Vec<String>,
    steps: Vec<Step>,
}

fn cases(file: &str, f: &Feature) -> Vec<Case> {
    let mut out = Vec::new();
    for s in &f.scenarios {
        let mut base_tags = f.tags.clone();
        base_tags.extend(s.tags.iter().cloned());
        let steps: Vec<Step> = f.background.iter().chain(&s.steps).cloned().collect();
        if !s.outline {
            out.push(Case {
                id: format!("{file}: {}", s.name),
                tags: base_tags,
                steps,
            });
            continue;
        }
        for ex in &s.examples {
            let Some((header, rows)) = ex.rows.split_first() else {
                continue;
            };
            for row in rows {
                let fill = |t: &str| {
                    header.iter().zip(row).fold(t.to_string(), |acc, (h, v)| {
                        acc.replace(&format!("<{h}>"), v)
                    })
                };
                let mut tags = base_tags.clone();
                tags.extend(ex.tags.iter().cloned());
                out.push(Case {
                    id: format!("{file}: {} [{}]", s.name, row.join(" | ")),
                    tags,
                    steps: steps
                        .iter()
                        .map(|st| Step {
                            text: fill(&st.text),
                            table: st
                                .table
                                .iter()
                                .map(|r| r.iter().map(|c| fill(c)).collect())
                                .collect(),
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

/// The quoted arguments of a step, in order (`\"` inside one is a quote).
fn quoted(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, current.as_mut()) {
            ('"', None) => current = Some(String::new()),
            ('"', Some(_)) => out.extend(current.take()),
            ('\\', Some(s)) => match chars.next() {
                Some('"') => s.push('"'),
                Some(o) => {
                    s.push('\\');
                    s.push(o);
                }
                None => s.push('\\'),
            },
            (c, Some(s)) => s.push(c),
            (_, None) => {}
        }
    }
    out
}

// ------------------------------------------------- what cannot run, and why

/// Provider suite features about a provider's own machinery: none is an
/// evaluation an OFREP endpoint answers.
const PROVIDER_ONLY: &[(&str, &str)] = &[
    ("config.feature", "a flagd provider's own options (hosts, ports, resolver modes, environment variables): no evaluation"),
    ("connection.feature", "a flagd provider's connection, reconnection and stream events against a flagd it can stop and start"),
    ("contextEnrichment.feature", "context enrichment by flagd's sync stream (an in-process provider feature)"),
    ("events.feature", "provider events (ready, change, stale, error) of flagd's streams; OFREP clients poll instead (Firebreak answers ETag/304)"),
    ("rpc-caching.feature", "the RPC provider's client-side cache"),
    ("selector.feature", "flagd's sync selectors of an in-process provider; the selector cases of the disabled and metadata features run, each selector as a Firebreak that imported that file"),
    ("sync-payload.feature", "flagd's sync payload (a gRPC stream), not an evaluation"),
];

/// Why a case cannot run here, if it cannot.
fn not_run(tags: &[String]) -> Option<&'static str> {
    let has = |t: &str| tags.iter().any(|x| x == t);
    if has("@fractional-v3") {
        return Some("@fractional-v3: bucketing of non-string keys (flagd ADR fractional-non-string-rand-units) is not in flagd's evaluator yet; Firebreak's flags.fractional offers v2 (flagd today) and v1, and v3 will be one more value");
    }
    if has("@deprecated") {
        return Some("@deprecated by the testbed itself (\"@no-default-variant should be used instead\"; that scenario runs)");
    }
    None
}

// ------------------------------------------------------------------ servers

fn testbed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/flagd-testbed")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn deep_merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// The flag file a source names: the evaluator suite's, the provider suite's
/// merged `flags/*.json` (all but `selector-*`, as the launchpad merges them,
/// also served as `flags/allFlags.json`), or one raw file by its selector.
fn flag_file(source: &str) -> Value {
    let root = testbed();
    match source {
        "evaluator" => read_json(&root.join("evaluator/flags/testkit-flags.json")),
        "provider" | "flags/allFlags.json" => {
            let mut names: Vec<PathBuf> = std::fs::read_dir(root.join("flags"))
                .expect("flags dir")
                .map(|e| e.expect("entry").path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    n.ends_with(".json") && !n.starts_with("selector-")
                })
                .collect();
            names.sort();
            let mut merged = json!({});
            for n in names {
                deep_merge(&mut merged, read_json(&n));
            }
            merged
        }
        raw => {
            let name = raw.strip_prefix("rawflags/").unwrap_or_else(|| {
                panic!("unknown selector {raw:?}: teach flag_file() where its flags are")
            });
            read_json(&root.join("flags").join(name))
        }
    }
}

struct Servers {
    dir: PathBuf,
    running: BTreeMap<(String, String), Firebreak>,
}

impl Servers {
    async fn get(&mut self, source: &str, bucketing: &str) -> &Firebreak {
        let key = (source.to_string(), bucketing.to_string());
        if !self.running.contains_key(&key) {
            let dir = self
                .dir
                .join(format!("{}-{bucketing}", source.replace('/', "_")));
            let fb = Firebreak::start(
                &dir,
                Options::embedded().with("FIREBREAK_FLAGS__FRACTIONAL", bucketing),
            )
            .await;
            let (status, body) = fb.post("/api/v1/flags/import", &flag_file(source)).await;
            assert_eq!(
                status, 200,
                "{source}: Firebreak refused the testbed's flag file: {body}"
            );
            println!(
                "{source} ({bucketing}): imported {} flags, warnings: {}",
                body["imported"].as_array().map_or(0, Vec::len),
                body["warnings"]
            );
            self.running.insert(key.clone(), fb);
        }
        &self.running[&key]
    }
}

// ------------------------------------------------------------ evaluation

/// What an OpenFeature client ends with after one OFREP answer.
#[derive(Debug, Clone, PartialEq)]
struct Details {
    value: Value,
    reason: String,
    error_code: Option<String>,
    metadata: Map<String, Value>,
}

fn typed(kind: &str, text: &str) -> Result<Value, String> {
    Ok(match kind {
        "Boolean" => json!(text.parse::<bool>().map_err(|e| format!("{text:?}: {e}"))?),
        "Integer" => json!(text.parse::<i64>().map_err(|e| format!("{text:?}: {e}"))?),
        "Float" => json!(text.parse::<f64>().map_err(|e| format!("{text:?}: {e}"))?),
        "String" => json!(text),
        "Object" => serde_json::from_str(text).map_err(|e| format!("{text:?}: {e}"))?,
        other => return Err(format!("unknown flag type {other:?}")),
    })
}

fn is_type(kind: &str, v: &Value) -> bool {
    match kind {
        "Boolean" => v.is_boolean(),
        "Integer" => v.is_i64() || v.is_u64(),
        "Float" => v.is_number(),
        "String" => v.is_string(),
        "Object" => v.is_object() || v.is_array(),
        _ => false,
    }
}

fn same(kind: &str, a: &Value, b: &Value) -> bool {
    match kind {
        "Float" => a.as_f64() == b.as_f64(),
        _ => a == b,
    }
}

/// Reads one OFREP answer (status, body) as a provider does.
fn read_answer(kind: &str, default: &Value, status: u16, body: &Value) -> Details {
    let error = |code: &str| Details {
        value: default.clone(),
        reason: "ERROR".into(),
        error_code: Some(code.to_string()),
        metadata: Map::new(),
    };
    if status == 404 {
        return error("FLAG_NOT_FOUND");
    }
    if status != 200 || body.get("errorCode").is_some() {
        return error(body["errorCode"].as_str().unwrap_or("GENERAL"));
    }
    let value = body
        .get("value")
        .cloned()
        .unwrap_or_else(|| default.clone());
    if !is_type(kind, &value) {
        return error("TYPE_MISMATCH");
    }
    Details {
        value,
        reason: body["reason"].as_str().unwrap_or("").to_string(),
        error_code: None,
        metadata: body["metadata"].as_object().cloned().unwrap_or_default(),
    }
}

#[derive(Default)]
struct World {
    source: Option<String>,
    selector: Option<String>,
    flag: Option<(String, String, Value)>, // type, key, default
    context: Map<String, Value>,
    results: Vec<(&'static str, Details)>,
}

async fn run_case(case: &Case, servers: &mut Servers) -> Result<(), String> {
    let mut w = World::default();
    let bucketing = if case.tags.iter().any(|t| t == "@fractional-v1") {
        "v1"
    } else {
        "v2"
    };
    for step in &case.steps {
        let t = step.text.as_str();
        let q = quoted(t);
        if t == "an evaluator" {
            w.source = Some("evaluator".into());
        } else if t.starts_with("an option ") {
            // `cache` and other provider options change nothing an OFREP
            // endpoint answers; `selector` names the flag file.
            if q[0] == "selector" {
                w.selector = Some(q[2].clone());
            }
        } else if t == "a stable flagd provider" || t == "a metadata flagd provider" {
            w.source = Some(w.selector.clone().unwrap_or_else(|| "provider".into()));
        } else if let Some(kind) = t
            .strip_prefix("a ")
            .and_then(|r| r.split_once("-flag with key "))
        {
            let kind = kind.0.to_string();
            let default = typed(&kind, &q[1])?;
            w.flag = Some((kind, q[0].clone(), default));
        } else if t.starts_with("a context containing a key ") {
            let value = if q[2].is_empty() && q[1] != "String" {
                Value::Null
            } else {
                typed(&q[1], &q[2])?
            };
            w.context.insert(q[0].clone(), value);
        } else if t.starts_with("a context containing a targeting key with value ") {
            w.context.insert("targetingKey".into(), json!(q[0]));
        } else if t.starts_with("a context containing a nested property ") {
            let outer = w.context.entry(q[0].clone()).or_insert_with(|| json!({}));
            outer[&q[1]] = json!(q[2]);
        } else if t == "the flag was evaluated with details" {
            let source = w.source.clone().ok_or("no evaluator or provider given")?;
            let (kind, key, default) = w.flag.clone().ok_or("no flag given")?;
            let fb = servers.get(&source, bucketing).await;
            let c = client();
            let body = json!({"context": w.context});
            let r = c
                .post(format!("{}/ofrep/v1/evaluate/flags/{key}", fb.base))
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let one: Value = r.json().await.map_err(|e| e.to_string())?;
            w.results
                .push(("single", read_answer(&kind, &default, status, &one)));
            let r = c
                .post(format!("{}/ofrep/v1/evaluate/flags", fb.base))
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let all: Value = r.json().await.map_err(|e| e.to_string())?;
            let entry = all["flags"]
                .as_array()
                .and_then(|a| a.iter().find(|f| f["key"] == json!(key)));
            let details = match (status, entry) {
                (200, Some(e)) => read_answer(&kind, &default, 200, e),
                (200, None) => read_answer(&kind, &default, 404, &json!({})),
                (s, _) => read_answer(&kind, &default, s, &all),
            };
            w.results.push(("bulk", details));
        } else if t.starts_with("the resolved details value should be ") {
            let (kind, _, _) = w.flag.clone().ok_or("no flag given")?;
            let want = typed(&kind, &q[0])?;
            for (how, d) in &w.results {
                if !same(&kind, &d.value, &want) {
                    return Err(format!("{how}: value {} != {want} ({d:?})", d.value));
                }
            }
        } else if t.starts_with("the reason should be ") {
            for (how, d) in &w.results {
                if d.reason != q[0] {
                    return Err(format!("{how}: reason {} != {} ({d:?})", d.reason, q[0]));
                }
            }
        } else if t.starts_with("the error-code should be ") {
            let want = Some(q[0].clone()).filter(|c| !c.is_empty());
            for (how, d) in &w.results {
                if d.error_code != want {
                    return Err(format!(
                        "{how}: error code {:?} != {want:?} ({d:?})",
                        d.error_code
                    ));
                }
            }
        } else if t == "the resolved metadata should contain" {
            let (header, rows) = step.table.split_first().ok_or("a metadata table")?;
            assert_eq!(header, &["key", "metadata_type", "value"], "{}", case.id);
            for row in rows {
                let want = typed(&row[1], &row[2])?;
                for (how, d) in &w.results {
                    let got = d.metadata.get(&row[0]);
                    if !got.is_some_and(|g| same(&row[1], g, &want)) {
                        return Err(format!("{how}: metadata {} is {got:?}, not {want}", row[0]));
                    }
                }
            }
        } else if t == "the resolved metadata is empty" {
            for (how, d) in &w.results {
                if !d.metadata.is_empty() {
                    return Err(format!("{how}: metadata {:?} is not empty", d.metadata));
                }
            }
        } else {
            return Err(format!("a step this reader does not know: {t:?}"));
        }
    }
    if w.results.is_empty() {
        return Err("the case never evaluated a flag".into());
    }
    Ok(())
}

/// Every scenario of the evaluator suite and of the provider suite's
/// evaluation, targeting, disabled and metadata features, over OFREP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagd_testbed_suite_passes_over_ofrep() {
    let root = testbed();
    let version = std::fs::read_to_string(root.join("version.txt")).expect("version.txt");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut servers = Servers {
        dir: tmp.path().to_path_buf(),
        running: BTreeMap::new(),
    };
    let mut features: Vec<(String, PathBuf)> = Vec::new();
    for dir in ["evaluator/gherkin", "gherkin"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .expect("features")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "feature"))
            .collect();
        files.sort();
        for f in files {
            let name = format!("{dir}/{}", f.file_name().unwrap().to_string_lossy());
            features.push((name, f));
        }
    }
    let (mut passed, mut failed, mut skipped) =
        (0, Vec::new(), BTreeMap::<String, Vec<String>>::new());
    for (name, path) in &features {
        let text = std::fs::read_to_string(path).expect("feature");
        let feature = parse_feature(&text);
        let file = name.rsplit('/').next().unwrap();
        let provider_only = name
            .starts_with("gherkin/")
            .then(|| PROVIDER_ONLY.iter().find(|(f, _)| *f == file))
            .flatten();
        for case in cases(name, &feature) {
            if let Some((_, why)) = provider_only {
                skipped.entry(why.to_string()).or_default().push(case.id);
                continue;
            }
            if let Some(why) = not_run(&case.tags) {
                skipped.entry(why.to_string()).or_default().push(case.id);
                continue;
            }
            match run_case(&case, &mut servers).await {
                Ok(()) => passed += 1,
                Err(e) => failed.push(format!("{}\n      {e}", case.id)),
            }
        }
    }
    let not_run: usize = skipped.values().map(Vec::len).sum();
    println!(
        "\nflagd-testbed {}: {passed} passed, {} failed, {not_run} not expressible over OFREP",
        version.trim(),
        failed.len()
    );
    for (why, ids) in &skipped {
        println!("\n  not run ({}): {why}", ids.len());
        for id in ids {
            println!("    - {id}");
        }
    }
    for f in &failed {
        println!("\n  FAILED {f}");
    }
    assert!(passed > 0, "no case ran");
    assert!(
        failed.is_empty(),
        "{} of {} flagd-testbed cases disagree:\n{}",
        failed.len(),
        passed + failed.len(),
        failed.join("\n")
    );
    for (_, mut fb) in servers.running {
        fb.stop().await;
    }
}
