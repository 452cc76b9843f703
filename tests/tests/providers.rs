//! Kill switch and rollback providers end to end: a real Unleash server (npm
//! unleash-server, started by tests/support/unleash/start.sh), a recording
//! stand-in for LaunchDarkly's REST API, and a rollback command fed hostile
//! label values.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firebreak_tests::{
    alert_now, client, deploy_now, eventually, free_port, owned_name, Firebreak, Options, Recorder,
};
use serde_json::{json, Value};

const UNLEASH_ADMIN: &str = "*:*.unleash-insecure-admin-api-token";

/// A throw-away Unleash on its own port and database, stopped on drop.
struct Unleash {
    port: u16,
    db: String,
    base: String,
}

impl Unleash {
    async fn start() -> Unleash {
        let port = free_port();
        let db = owned_name('_', &format!("unleash_{port}"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/unleash/start.sh");
        let out = tokio::process::Command::new("bash")
            .arg(&script)
            .arg(port.to_string())
            .arg(&db)
            .output()
            .await
            .expect("run start.sh");
        assert!(
            out.status.success(),
            "Unleash did not start (CI installs it with npm ci in tests/support/unleash):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Unleash {
            port,
            db,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = client()
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", UNLEASH_ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn enabled(&self, flag: &str, env: &str) -> bool {
        let (_, f) = self
            .admin(
                reqwest::Method::GET,
                &format!("/api/admin/projects/default/features/{flag}"),
                None,
            )
            .await;
        f["environments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == env)
            .unwrap()["enabled"]
            .as_bool()
            .unwrap()
    }
}

impl Drop for Unleash {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/unleash/stop.sh");
        let _ = std::process::Command::new("bash")
            .arg(script)
            .arg(self.port.to_string())
            .arg(&self.db)
            .status();
    }
}

fn playbook_dir(dir: &Path, text: &str) -> String {
    let books = dir.join("playbooks");
    std::fs::create_dir_all(&books).unwrap();
    std::fs::write(books.join("p.yaml"), text).unwrap();
    books.display().to_string()
}

#[tokio::test]
async fn unleash_kill_switch_is_turned_off_verified_and_reverted() {
    let unleash = Unleash::start().await;
    let flag = "checkout.new-payment-flow";
    let (status, body) = unleash
        .admin(
            reqwest::Method::POST,
            "/api/admin/projects/default/features",
            Some(json!({"name": flag, "type": "kill-switch"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = unleash
        .admin(
            reqwest::Method::POST,
            &format!("/api/admin/projects/default/features/{flag}/environments/production/on"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(unleash.enabled(flag, "production").await);

    let dir = tempfile::tempdir().unwrap();
    let books = playbook_dir(
        dir.path(),
        "name: unleash-kill\nwhen:\n  alert: { matchers: ['alertname=\"HighErrorRate\"', 'service=\"checkout\"'] }\n  deployed_within: 30m\ndo:\n  - kill_switch: { provider: unleash, flag: checkout.new-payment-flow }\n",
    );
    let config = dir.path().join("firebreak.toml");
    std::fs::write(
        &config,
        format!(
            "[kill_switch.unleash]\ntype = \"unleash\"\nurl = \"{}\"\ntoken = \"${{FIREBREAK_SECRET_UNLEASH}}\"\nenvironment = \"production\"\n",
            unleash.base
        ),
    )
    .unwrap();
    let fb = Firebreak::start(
        &dir.path().join("data"),
        Options::embedded()
            .with("FIREBREAK_PLAYBOOKS", &books)
            .with("FIREBREAK_CONFIG", config.to_str().unwrap())
            .with("FIREBREAK_SECRET_UNLEASH", UNLEASH_ADMIN),
    )
    .await;
    fb.post("/api/v1/events/deploy", &deploy_now("checkout", "v2", 7))
        .await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("u1", "HighErrorRate", "checkout", 0),
    )
    .await;
    let action = fb.action_in("unleash-kill", "succeeded").await;
    assert_eq!(action["result"]["verified"], true, "{action}");
    assert_eq!(action["previous_state"]["enabled"], true);
    assert!(
        !unleash.enabled(flag, "production").await,
        "Unleash says the flag is off"
    );

    let (status, body) = fb
        .post(
            &format!("/api/v1/actions/{}/revert", action["id"]),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        unleash.enabled(flag, "production").await,
        "revert turned it back on"
    );
    assert!(
        !fb.logs().contains(UNLEASH_ADMIN),
        "the admin token never reaches the log"
    );
}

/// A missing Unleash feature fails without retrying forever, and the failure
/// is escalated.
#[tokio::test]
async fn unleash_missing_feature_fails_and_escalates() {
    let unleash = Unleash::start().await;
    let hooks = Recorder::start(|_| (200, json!({}))).await;
    let dir = tempfile::tempdir().unwrap();
    let books = playbook_dir(
        dir.path(),
        "name: unleash-missing\nwhen:\n  alert: { matchers: ['alertname=\"HighErrorRate\"'] }\ndo:\n  - kill_switch: { provider: unleash, flag: no.such-feature, environment: production }\n",
    );
    let config = dir.path().join("firebreak.toml");
    std::fs::write(
        &config,
        format!(
            "[automation]\nescalate_webhook = \"oncall\"\nretry_backoff = \"50ms\"\n\n[notify.oncall]\ntype = \"webhook\"\nurl = \"{}/oncall\"\n\n[kill_switch.unleash]\ntype = \"unleash\"\nurl = \"{}\"\ntoken = \"{UNLEASH_ADMIN}\"\n",
            hooks.base, unleash.base
        ),
    )
    .unwrap();
    let fb = Firebreak::start(
        &dir.path().join("data"),
        Options::embedded()
            .with("FIREBREAK_PLAYBOOKS", &books)
            .with("FIREBREAK_CONFIG", config.to_str().unwrap()),
    )
    .await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("u2", "HighErrorRate", "checkout", 0),
    )
    .await;
    let failed = fb.action_in("unleash-missing", "failed").await;
    assert!(
        failed["reason"].as_str().unwrap().contains("HTTP 404"),
        "{failed}"
    );
    let page = eventually("the escalation", Duration::from_secs(20), || async {
        hooks.matching("POST", "/oncall").pop()
    })
    .await;
    assert!(
        page.body["text"]
            .as_str()
            .unwrap()
            .contains("A human needs to look"),
        "{:?}",
        page.body
    );
    let incident = failed["incident_id"].as_i64().unwrap();
    let (_, t) = fb
        .get(&format!("/api/v1/incidents/{incident}/timeline"))
        .await;
    assert!(t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "action_failed"));
    // The flag was never read, so nothing knows what to restore: a revert
    // says so instead of answering 200 and changing nothing.
    let (s, refused) = fb
        .post(
            &format!("/api/v1/actions/{}/revert", failed["id"]),
            &json!({}),
        )
        .await;
    assert_eq!(s, 409, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("no recorded previous state"),
        "{refused}"
    );
}

/// LaunchDarkly is SaaS: a stand-in keeps one flag's state, takes the semantic
/// patch and answers the flag read-back.
#[tokio::test]
async fn launchdarkly_semantic_patch_turns_the_flag_off() {
    let on = Arc::new(Mutex::new(true));
    let state = on.clone();
    let ld = Recorder::start(move |r| {
        if r.path != "/api/v2/flags/shop/new-checkout" {
            return (404, json!({"code": "not_found"}));
        }
        if r.method == "PATCH" {
            match r.body["instructions"][0]["kind"].as_str() {
                Some("turnFlagOff") => *state.lock().unwrap() = false,
                Some("turnFlagOn") => *state.lock().unwrap() = true,
                _ => return (400, json!({"code": "invalid_request"})),
            }
        }
        let on = *state.lock().unwrap();
        (
            200,
            json!({"key": "new-checkout", "environments": {"production": {"on": on}}}),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let books = playbook_dir(
        dir.path(),
        "name: ld-kill\nwhen:\n  alert: { matchers: ['alertname=\"HighErrorRate\"'] }\ndo:\n  - kill_switch: { provider: ld, flag: new-checkout }\n",
    );
    let config = dir.path().join("firebreak.toml");
    std::fs::write(
        &config,
        format!("[kill_switch.ld]\ntype = \"launchdarkly\"\nurl = \"{}\"\ntoken = \"api-123\"\nproject = \"shop\"\nenvironment = \"production\"\n", ld.base),
    )
    .unwrap();
    let fb = Firebreak::start(
        &dir.path().join("data"),
        Options::embedded()
            .with("FIREBREAK_PLAYBOOKS", &books)
            .with("FIREBREAK_CONFIG", config.to_str().unwrap()),
    )
    .await;
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("l1", "HighErrorRate", "shop", 0),
    )
    .await;
    let action = fb.action_in("ld-kill", "succeeded").await;
    assert_eq!(action["result"]["verified"], true);
    assert!(!*on.lock().unwrap());
    let patch = ld
        .matching("PATCH", "/api/v2/flags/shop/new-checkout")
        .pop()
        .unwrap();
    assert_eq!(
        patch.headers["content-type"],
        "application/json; domain-model=launchdarkly.semanticpatch"
    );
    assert_eq!(patch.headers["authorization"], "api-123");
    assert_eq!(patch.body["environmentKey"], "production");
    assert_eq!(patch.body["instructions"], json!([{"kind": "turnFlagOff"}]));
    let reads = ld.matching("GET", "/api/v2/flags/shop/new-checkout");
    assert!(
        reads.len() >= 2,
        "read before (previous state) and after (verify)"
    );
    assert_eq!(reads[0].query, "env=production");
}

/// A rollback command gets alert values as single arguments: a service name
/// with shell syntax in it is data, not code.
#[tokio::test]
async fn rollback_command_gets_values_as_arguments_never_through_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("argv.json");
    let pwned = dir.path().join("pwned");
    let service = format!("checkout; touch {}", pwned.display());
    let books = playbook_dir(
        dir.path(),
        "name: cmd-rollback\nwhen:\n  deploy: { status: [failed] }\ndo:\n  - rollback: { provider: script }\n",
    );
    let config = dir.path().join("firebreak.toml");
    let script = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))";
    std::fs::write(
        &config,
        format!(
            "[rollback.script]\ntype = \"command\"\nargv = [\"python3\", \"-c\", {}, {}, \"{{{{service}}}}\", \"--to\", \"{{{{target.version}}}}\"]\n",
            toml_string(script),
            toml_string(&out.display().to_string())
        ),
    )
    .unwrap();
    let fb = Firebreak::start(
        &dir.path().join("data"),
        Options::embedded()
            .with("FIREBREAK_PLAYBOOKS", &books)
            .with("FIREBREAK_CONFIG", config.to_str().unwrap()),
    )
    .await;
    fb.post("/api/v1/events/deploy", &deploy_now(&service, "v1", 60))
        .await;
    let failed = json!({"service": service, "version": "v2", "status": "failed",
                        "started_at": (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339()});
    fb.post("/api/v1/events/deploy", &failed).await;
    let action = fb.action_in("cmd-rollback", "succeeded").await;
    assert_eq!(action["result"]["response"]["exit_code"], 0, "{action}");
    let argv: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(argv, vec![service.clone(), "--to".into(), "v1".into()]);
    assert!(!pwned.exists(), "nothing ran the label as a command");
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A generic HTTP kill switch that answers 503 once is retried with backoff and
/// then verified; an `http` step sends label values as data: percent-encoded
/// in the URL, escaped in the JSON body.
#[tokio::test]
async fn http_kill_switch_is_retried_and_http_steps_send_values_as_data() {
    let state = Arc::new(Mutex::new((true, 0u32)));
    let shared = state.clone();
    let rec = Recorder::start(move |r| {
        let mut st = shared.lock().unwrap();
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/flags/pay.flag") => (200, json!({"data": {"enabled": st.0}})),
            ("PUT", "/flags/pay.flag") => {
                if st.1 == 0 {
                    st.1 += 1;
                    return (503, json!({"error": "try again"}));
                }
                st.0 = r.body["enabled"].as_bool().unwrap();
                (200, json!({"ok": true}))
            }
            ("POST", "/hook") => (200, json!({"received": true})),
            _ => (404, json!({})),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let books = playbook_dir(
        dir.path(),
        "name: http-things\nwhen:\n  alert: { matchers: ['alertname=\"Pay\"'] }\ndo:\n  - kill_switch: { provider: custom, flag: pay.flag }\n  - http:\n      url: \"REC/hook?svc={{service}}\"\n      headers: { X-Token: \"${FIREBREAK_SECRET_HOOK}\" }\n      body: { service: \"{{service}}\", team: \"{{labels.team}}\", n: 1 }\n"
            .replace("REC", &rec.base)
            .as_str(),
    );
    let config = dir.path().join("firebreak.toml");
    std::fs::write(
        &config,
        format!(
            "[automation]\nretry_backoff = \"50ms\"\n\n[kill_switch.custom]\ntype = \"http\"\nset_url = \"{0}/flags/{{{{flag}}}}\"\nset_method = \"PUT\"\nset_body = {{ enabled = \"{{{{enabled}}}}\" }}\nget_url = \"{0}/flags/{{{{flag}}}}\"\nstate_pointer = \"/data/enabled\"\n",
            rec.base
        ),
    )
    .unwrap();
    let fb = Firebreak::start(
        &dir.path().join("data"),
        Options::embedded()
            .with("FIREBREAK_PLAYBOOKS", &books)
            .with("FIREBREAK_CONFIG", config.to_str().unwrap())
            .with("FIREBREAK_SECRET_HOOK", "h00k"),
    )
    .await;
    let service = "pay \"quoted\"&x=1";
    fb.post(
        "/api/v1/alerts/alertmanager",
        &alert_now("h1", "Pay", service, 0),
    )
    .await;
    let ks = eventually("the kill switch", Duration::from_secs(20), || async {
        fb.actions()
            .await
            .into_iter()
            .find(|a| a["kind"] == "kill_switch" && a["status"] == "succeeded")
    })
    .await;
    assert_eq!(ks["attempts"], 2, "retried once after the 503: {ks}");
    assert_eq!(ks["result"]["verified"], true);
    assert!(!state.lock().unwrap().0);
    let puts = rec.matching("PUT", "/flags/pay.flag");
    assert_eq!(
        puts.last().unwrap().body,
        json!({"enabled": false}),
        "a boolean, not a string"
    );
    let (_, audit) = fb.get(&format!("/api/v1/audit?action={}", ks["id"])).await;
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "retry"));

    let hook = eventually("the http step", Duration::from_secs(20), || async {
        rec.matching("POST", "/hook").pop()
    })
    .await;
    assert_eq!(hook.query, "svc=pay%20%22quoted%22%26x%3D1");
    assert_eq!(hook.body, json!({"service": service, "team": "", "n": 1}));
    assert_eq!(hook.headers["x-token"], "h00k");
}
