//! `firebreak bench`: a load generator against a running Firebreak over HTTP.
//!
//! It sends Alertmanager webhooks (N alerts per body, distinct fingerprints
//! across many services) as fast as they are accepted or at a fixed rate, with
//! deploy events and gate results mixed in, and reports accepted alerts/s,
//! processed alerts/s (read from the target's /metrics until the engine has
//! committed everything) and request latency. With `--probes`, it also measures
//! alert-to-kill-switch latency under that load: the target must load
//! `bench/playbooks/latency-probe.yaml`, which turns off the built-in flag
//! `bench.probe` when a `FirebreakBenchProbe` alert fires.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Firebreak's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Alerts per webhook body.
    #[arg(long, default_value_t = 100)]
    pub alerts_per_webhook: usize,
    /// Concurrent senders.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// How long to send, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Alerts per second to send (0: as fast as accepted).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Distinct services the alerts are spread over.
    #[arg(long, default_value_t = 50)]
    pub services: usize,
    /// One deploy event and one gate result per this many webhooks (0: none).
    #[arg(long, default_value_t = 50)]
    pub deploy_every: u64,
    /// Alert-to-kill-switch latency probes to send during the load (0: none).
    #[arg(long, default_value_t = 0)]
    pub probes: usize,
    /// Bearer token sent with every request (an admin token: the generator
    /// sends alerts, sets the probe flag, reads OFREP, actions and metrics).
    #[arg(long, env = "FIREBREAK_BENCH_TOKEN")]
    pub token: Option<String>,
    /// Stop after this many webhooks (0: run for --duration). `--webhooks 1
    /// --alerts-per-webhook 10000` is a storm in one webhook.
    #[arg(long, default_value_t = 0)]
    pub webhooks: u64,
    /// Services are named <prefix>-<n>.
    #[arg(long, default_value = "svc")]
    pub service_prefix: String,
    /// After the load, fetch the web page of the newest incident of
    /// <prefix>-0 this many times and report how long it took (the server's
    /// own Server-Timing and the whole request). With `--services 1` and a
    /// storm, that is an incident with as many timeline entries as alerts.
    #[arg(long, default_value_t = 0)]
    pub page_probes: usize,
    /// A storm: send as fast as accepted for this long (e.g. 3s), then send
    /// the `--probes` one after another while the backlog drains, and time
    /// each (the kill switch behind a backlog).
    #[arg(long)]
    pub storm: Option<String>,
    /// Guarded-rollout kill probes to run during the load (0: none): each
    /// rolls a fresh built-in flag out to 50 %, posts a failed gate result
    /// for its service, and times until OFREP serves the flag off.
    #[arg(long, default_value_t = 0)]
    pub rollout_probes: usize,
    /// A label for this run in the output.
    #[arg(long, default_value = "run")]
    pub label: String,
    /// Where the processed count is read (each process's /metrics, summed):
    /// the engine processes of a split install, comma-separated. Default:
    /// --url, a process that runs the engine itself.
    #[arg(long, value_delimiter = ',')]
    pub metrics_url: Vec<String>,
}

struct Shared {
    sent_alerts: AtomicU64,
    accepted_alerts: AtomicU64,
    failed_requests: AtomicU64,
    /// Answered 503 because Firebreak's backlog was over its bound.
    throttled_requests: AtomicU64,
    latencies_us: std::sync::Mutex<Vec<u64>>,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn webhook(run: &str, seq: u64, per: usize, services: (&str, usize), status: &str) -> Value {
    let now = Utc::now().to_rfc3339();
    let alerts: Vec<Value> = (0..per)
        .map(|i| {
            let n = seq * per as u64 + i as u64;
            let service = format!("{}-{}", services.0, n % services.1 as u64);
            json!({
                "status": status,
                "labels": {"alertname": "BenchHighErrorRate", "service": service, "env": "bench", "severity": "warning", "instance": format!("10.0.{}.{}:9100", n % 250, n % 199)},
                "annotations": {"summary": "bench alert"},
                "startsAt": now,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": format!("{run}{n:016x}"),
            })
        })
        .collect();
    json!({
        "version": "4", "groupKey": format!("bench:{seq}"), "truncatedAlerts": 0, "status": status,
        "receiver": "firebreak", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "alerts": alerts,
    })
}

/// Alerts the engine has committed, summed over the processes that run it.
async fn processed(http: &reqwest::Client, urls: &[String]) -> f64 {
    let mut sum = 0.0;
    for url in urls {
        sum += metric(
            http,
            url,
            "firebreak_events_processed_total{kind=\"alert\"}",
        )
        .await;
    }
    sum
}

async fn metric(http: &reqwest::Client, url: &str, name: &str) -> f64 {
    let Ok(r) = http.get(format!("{url}/metrics")).send().await else {
        return f64::NAN;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let storm = match &args.storm {
        Some(d) => Some(
            crate::config::parse_duration(d)
                .ok_or_else(|| anyhow::anyhow!("--storm {d:?} is not a duration like 3s"))?,
        ),
        None => None,
    };
    let duration = match storm {
        Some(d) => d,
        None => crate::config::parse_duration(&args.duration).ok_or_else(|| {
            anyhow::anyhow!("--duration {:?} is not a duration like 10s", args.duration)
        })?,
    };
    let url = args.url.trim_end_matches('/').to_string();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = &args.token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| anyhow::anyhow!("--token is not a valid header value"))?,
        );
    }
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(args.connections * 2)
        .timeout(Duration::from_secs(60))
        .build()?;
    let ready = http.get(format!("{url}/readyz")).send().await;
    if !matches!(&ready, Ok(r) if r.status().is_success()) {
        anyhow::bail!("{url}/readyz does not answer 200: is Firebreak running there?");
    }
    let engines: Vec<String> = if args.metrics_url.is_empty() {
        vec![url.clone()]
    } else {
        args.metrics_url
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect()
    };
    let processed_before = processed(&http, &engines).await;
    let run_id = format!("{:06x}", Utc::now().timestamp_micros() as u64 & 0xff_ffff);
    let shared = Arc::new(Shared {
        sent_alerts: AtomicU64::new(0),
        accepted_alerts: AtomicU64::new(0),
        failed_requests: AtomicU64::new(0),
        throttled_requests: AtomicU64::new(0),
        latencies_us: std::sync::Mutex::new(Vec::new()),
    });
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let per_conn_interval = if args.rate > 0 {
        let webhooks_per_s = args.rate as f64 / args.alerts_per_webhook as f64;
        Some(Duration::from_secs_f64(
            args.connections as f64 / webhooks_per_s,
        ))
    } else {
        None
    };
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (http, url, shared, seq, args, run_id) = (
            http.clone(),
            url.clone(),
            shared.clone(),
            seq.clone(),
            args.clone(),
            run_id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Some(iv) = per_conn_interval {
                tokio::time::sleep(iv.mul_f64(c as f64 / args.connections as f64)).await;
            }
            let mut next = Instant::now();
            while Instant::now() < deadline || args.webhooks > 0 {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                if args.webhooks > 0 && n >= args.webhooks {
                    break;
                }
                let body = webhook(
                    &run_id,
                    n,
                    args.alerts_per_webhook,
                    (&args.service_prefix, args.services),
                    "firing",
                );
                let t0 = Instant::now();
                let req = http.post(format!("{url}/api/v1/alerts/alertmanager")).json(&body);
                shared.sent_alerts.fetch_add(args.alerts_per_webhook as u64, Ordering::Relaxed);
                match req.send().await {
                    Ok(r) if r.status().as_u16() == 503 => {
                        shared.throttled_requests.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status().as_u16() == 202 => {
                        shared.accepted_alerts.fetch_add(args.alerts_per_webhook as u64, Ordering::Relaxed);
                        if let Ok(mut l) = shared.latencies_us.lock() {
                            l.push(t0.elapsed().as_micros() as u64);
                        }
                    }
                    _ => {
                        shared.failed_requests.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if args.deploy_every > 0 && n % args.deploy_every == 0 {
                    let service = format!("{}-{}", args.service_prefix, n % args.services as u64);
                    let at = Utc::now().to_rfc3339();
                    let _ = http
                        .post(format!("{url}/api/v1/events/deploy"))
                        .json(&json!({"service": service, "environment": "bench", "version": format!("b{n}"), "started_at": at}))
                        .send()
                        .await;
                    let _ = http
                        .post(format!("{url}/api/v1/events/gate"))
                        .json(&json!({"service": service, "environment": "bench", "version": format!("b{n}"), "gate": "bench-canary", "verdict": "pass", "evaluated_at": at}))
                        .send()
                        .await;
                }
                if let Some(iv) = per_conn_interval {
                    next += iv;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }));
    }
    let probes = if args.probes > 0 && storm.is_none() {
        Some(tokio::spawn(probe_latency(
            http.clone(),
            url.clone(),
            args.probes,
            deadline,
            run_id.clone(),
        )))
    } else {
        None
    };
    let rollout_probes = (args.rollout_probes > 0).then(|| {
        tokio::spawn(probe_rollouts(
            http.clone(),
            url.clone(),
            args.rollout_probes,
            run_id.clone(),
        ))
    });
    for t in tasks {
        let _ = t.await;
    }
    let send_secs = start.elapsed().as_secs_f64();
    let rollout_result = match rollout_probes {
        Some(p) => Some(p.await??),
        None => None,
    };
    // A storm's probes go after it, one by one, while the backlog drains.
    let mut backlog_at_probe = None;
    let probe_result = match probes {
        Some(p) => Some(p.await??),
        None if storm.is_some() && args.probes > 0 => {
            backlog_at_probe =
                Some(metric(&http, &url, "firebreak_queue_depth{lane=\"bulk\"}").await);
            let spacing =
                Duration::from_millis(200) * u32::try_from(args.probes + 1).unwrap_or(u32::MAX);
            Some(
                probe_latency(
                    http.clone(),
                    url.clone(),
                    args.probes,
                    Instant::now() + spacing,
                    run_id.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    let accepted = shared.accepted_alerts.load(Ordering::Relaxed);
    // Processed: wait until the engine has committed what was accepted (or gives up).
    let target = processed_before + accepted as f64;
    let drain_deadline = Instant::now() + Duration::from_secs(300);
    let mut processed_now = processed_before;
    while Instant::now() < drain_deadline {
        processed_now = processed(&http, &engines).await;
        if processed_now >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_secs = start.elapsed().as_secs_f64();
    let processed = processed_now - processed_before;
    let page = if args.page_probes > 0 {
        Some(
            probe_page(
                &http,
                &url,
                &format!("{}-0", args.service_prefix),
                args.page_probes,
            )
            .await?,
        )
    } else {
        None
    };
    let mut lat = shared
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let report = json!({
        "bench": "pipeline",
        "label": args.label,
        "alerts_per_webhook": args.alerts_per_webhook,
        "connections": args.connections,
        "rate_target": args.rate,
        "seconds": send_secs,
        "accepted_alerts": accepted,
        "accepted_per_s": accepted as f64 / send_secs,
        "processed_alerts": processed,
        "processed_per_s": processed / all_secs,
        "drained": processed_now >= target,
        "failed_requests": shared.failed_requests.load(Ordering::Relaxed),
        "throttled_requests": shared.throttled_requests.load(Ordering::Relaxed),
        "storm_seconds": storm.map(|d| d.as_secs_f64()),
        "bulk_backlog_at_probes": backlog_at_probe,
        "request_ms": {"p50": ms(percentile(&lat, 0.5)), "p90": ms(percentile(&lat, 0.9)), "p99": ms(percentile(&lat, 0.99)), "max": ms(lat.last().copied().unwrap_or(0))},
        "kill_switch_ms": probe_result,
        "rollout_kill_ms": rollout_result,
        "page_ms": page,
    });
    println!("{:<28} {}", "run", args.label);
    println!(
        "{:<28} {} alerts/webhook, {} connections, {}",
        "load",
        args.alerts_per_webhook,
        args.connections,
        if args.rate > 0 {
            format!("{} alerts/s", args.rate)
        } else {
            "as fast as accepted".into()
        }
    );
    println!(
        "{:<28} {:.0} alerts/s ({accepted} in {send_secs:.1} s)",
        "accepted",
        accepted as f64 / send_secs
    );
    println!(
        "{:<28} {:.0} alerts/s ({processed:.0} committed in {all_secs:.1} s{})",
        "processed",
        processed / all_secs,
        if processed_now >= target {
            ""
        } else {
            ", NOT drained"
        }
    );
    let throttled = shared.throttled_requests.load(Ordering::Relaxed);
    if throttled > 0 {
        println!(
            "{:<28} {throttled} requests answered 503 + Retry-After (backlog over its bound)",
            "throttled"
        );
    }
    if let Some(depth) = backlog_at_probe {
        println!(
            "{:<28} {depth:.0} bulk messages waiting when the probes began",
            "backlog"
        );
    }
    println!(
        "{:<28} p50 {:.1} / p90 {:.1} / p99 {:.1} / max {:.1} ms",
        "request latency",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or(0))
    );
    if let Some(p) = &report["kill_switch_ms"].as_object() {
        for (k, v) in p.iter() {
            print_latency(&format!("webhook -> {k}"), v);
        }
    }
    print_latency("failed gate -> rollout off", &report["rollout_kill_ms"]);
    if let Some(p) = &page {
        println!(
            "{:<28} server p50 {:.1} / p99 {:.1} ms, request p50 {:.1} / p99 {:.1} ms ({} timeline entries, {} fetches)",
            "incident page",
            p["server_p50"].as_f64().unwrap_or(0.0),
            p["server_p99"].as_f64().unwrap_or(0.0),
            p["request_p50"].as_f64().unwrap_or(0.0),
            p["request_p99"].as_f64().unwrap_or(0.0),
            p["entries"],
            p["n"]
        );
    }
    println!("{report}");
    Ok(())
}

/// Fetches the newest incident of `service`'s web page `n` times, one after
/// another: the server's render time (its Server-Timing header) and the
/// whole request, in milliseconds.
async fn probe_page(
    http: &reqwest::Client,
    url: &str,
    service: &str,
    n: usize,
) -> anyhow::Result<Value> {
    let list: Value = http
        .get(format!("{url}/api/v1/incidents"))
        .query(&[("service", service), ("limit", "1")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let Some(id) = list["incidents"][0]["id"].as_i64() else {
        anyhow::bail!("no incident for {service} to fetch the page of");
    };
    let detail: Value = http
        .get(format!("{url}/api/v1/incidents/{id}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let (mut server, mut request) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t0 = Instant::now();
        let r = http.get(format!("{url}/incidents/{id}")).send().await?;
        let dur = r
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split("total;dur=").nth(1))
            .and_then(|d| d.split(',').next())
            .and_then(|d| d.trim().parse::<f64>().ok());
        let status = r.status();
        let body = r.bytes().await?;
        if !status.is_success() {
            anyhow::bail!("GET /incidents/{id} answered {status}");
        }
        request.push(t0.elapsed().as_micros() as u64);
        server.push((dur.unwrap_or(0.0) * 1000.0) as u64);
        std::hint::black_box(body);
    }
    server.sort_unstable();
    request.sort_unstable();
    let ms = |v: &[u64], p| percentile(v, p) as f64 / 1000.0;
    Ok(json!({
        "incident": id, "entries": detail["counts"]["timeline_entries"], "n": n,
        "server_p50": ms(&server, 0.5), "server_p99": ms(&server, 0.99),
        "request_p50": ms(&request, 0.5), "request_p99": ms(&request, 0.99),
    }))
}

/// Rolls `n` fresh flags out to 50 % one after another; for each, posts a
/// failed gate result of its service and times until OFREP answers
/// `DISABLED` (the engine's kill, the executor's kill switch, the read).
async fn probe_rollouts(
    http: reqwest::Client,
    url: String,
    n: usize,
    run_id: String,
) -> anyhow::Result<Value> {
    let mut took = Vec::new();
    for i in 0..n {
        let flag = format!("bench.rollout-{run_id}-{i}");
        let service = format!("rprobe-{run_id}-{i}");
        let req = http
            .put(format!("{url}/api/v1/flags/{flag}"))
            .json(&json!({"enabled": true, "description": "firebreak bench rollout probe"}));
        succeeds(req, &format!("cannot create {flag}")).await?;
        let req = http.post(format!("{url}/api/v1/rollouts")).json(
            &json!({"flag": flag, "service": service, "steps": [{"percent": 50, "hold": "1h"}]}),
        );
        let started = succeeds(req, &format!("cannot start a rollout of {flag}")).await?;
        let id = started.json::<Value>().await?["rollout"]["id"]
            .as_i64()
            .unwrap_or_default();
        let limit = Instant::now() + Duration::from_secs(60);
        loop {
            anyhow::ensure!(
                Instant::now() < limit,
                "rollout {id} did not reach 50 % within 60 s"
            );
            let r = answer(http.get(format!("{url}/api/v1/rollouts/{id}"))).await?;
            if r["percent"] == 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t0 = Instant::now();
        let req = http.post(format!("{url}/api/v1/events/gate")).json(
            &json!({"service": service, "version": "v2", "gate": "error-rate", "verdict": "fail"}),
        );
        succeeds(req, "gate refused").await?;
        loop {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "{flag} was not off within 60 s of the failed gate"
            );
            let r = answer(
                http.post(format!("{url}/ofrep/v1/evaluate/flags/{flag}"))
                    .json(&json!({"context": {"targetingKey": "probe-user"}})),
            )
            .await?;
            if r["reason"] == "DISABLED" {
                took.push(t0.elapsed().as_micros() as u64);
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    took.sort_unstable();
    Ok(json!({
        "n": took.len(),
        "p50": percentile(&took, 0.5) as f64 / 1000.0,
        "p90": percentile(&took, 0.9) as f64 / 1000.0,
        "p99": percentile(&took, 0.99) as f64 / 1000.0,
        "max": took.last().copied().unwrap_or(0) as f64 / 1000.0,
    }))
}

/// Sends probe alerts one at a time and times two moments: OFREP answers
/// `false` for `bench.probe`, and the action is recorded as verified.
async fn probe_latency(
    http: reqwest::Client,
    url: String,
    n: usize,
    deadline: Instant,
    run_id: String,
) -> anyhow::Result<Value> {
    let mut to_flag = Vec::new();
    let mut to_verified = Vec::new();
    let spacing = deadline
        .checked_duration_since(Instant::now())
        .unwrap_or_default()
        .div_f64(n as f64 + 1.0)
        .max(Duration::from_millis(50));
    for i in 0..n {
        tokio::time::sleep(spacing).await;
        let req = http
            .put(format!("{url}/api/v1/flags/bench.probe"))
            .json(&json!({"enabled": true, "description": "firebreak bench latency probe"}));
        succeeds(req, "cannot set the probe flag").await?;
        let service = format!("probe-{run_id}-{i}");
        let body = json!({
            "version": "4", "groupKey": format!("probe:{i}"), "truncatedAlerts": 0, "status": "firing",
            "receiver": "firebreak", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": [{"status": "firing", "labels": {"alertname": "FirebreakBenchProbe", "service": service},
                        "annotations": {}, "startsAt": Utc::now().to_rfc3339(), "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "", "fingerprint": format!("probe{run_id}{i:08x}")}],
        });
        let t0 = Instant::now();
        let req = http
            .post(format!("{url}/api/v1/alerts/alertmanager"))
            .json(&body);
        succeeds(req, "probe webhook refused").await?;
        let limit = t0 + Duration::from_secs(60);
        let mut flag_at = None;
        while Instant::now() < limit {
            let r = answer(
                http.post(format!("{url}/ofrep/v1/evaluate/flags/bench.probe"))
                    .json(&json!({"context": {}})),
            )
            .await?;
            if r["value"] == Value::Bool(false) {
                flag_at = Some(t0.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let Some(flag_at) = flag_at else {
            anyhow::bail!("probe {i}: the kill switch did not go off within 60 s; does the target load bench/playbooks/latency-probe.yaml?");
        };
        to_flag.push(flag_at.as_micros() as u64);
        while Instant::now() < limit {
            let r = answer(http.get(format!("{url}/api/v1/actions?limit=20"))).await?;
            let verified = r["actions"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["playbook"] == "bench-latency-probe"
                        && x["spec"]["vars"]["service"] == Value::String(service.clone())
                        && x["result"]["verified"] == Value::Bool(true)
                })
            });
            if verified {
                to_verified.push(t0.elapsed().as_micros() as u64);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let summary = |mut v: Vec<u64>| {
        v.sort_unstable();
        json!({
            "n": v.len(),
            "p50": percentile(&v, 0.5) as f64 / 1000.0,
            "p90": percentile(&v, 0.9) as f64 / 1000.0,
            "p99": percentile(&v, 0.99) as f64 / 1000.0,
            "max": v.last().copied().unwrap_or(0) as f64 / 1000.0,
        })
    };
    Ok(
        json!({"kill switch off (OFREP)": summary(to_flag), "action verified": summary(to_verified)}),
    )
}

/// One line of a probe's latency figures, when it ran.
fn print_latency(label: &str, figures: &Value) {
    if let Some(o) = figures.as_object() {
        let ms = |key: &str| o[key].as_f64().unwrap_or(0.0);
        println!(
            "{label:<28} p50 {:.1} / p90 {:.1} / p99 {:.1} / max {:.1} ms ({} probes)",
            ms("p50"),
            ms("p90"),
            ms("p99"),
            ms("max"),
            o["n"]
        );
    }
}

/// Sends `req` and reads its JSON answer.
async fn answer(req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    Ok(req.send().await?.json().await?)
}

/// Sends `req`; an answer other than 2xx fails, naming what was asked.
async fn succeeds(req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<reqwest::Response> {
    let r = req.send().await?;
    anyhow::ensure!(r.status().is_success(), "{what}: HTTP {}", r.status());
    Ok(r)
}
