//! The command line as an operator meets it.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn firebreak() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firebreak"));
    for (k, _) in std::env::vars() {
        if k.starts_with("FIREBREAK_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs `cmd`, expects success and answers stdout.
fn succeeds(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd`, expects exit code 2 (bad configuration) and answers stderr.
fn refused(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    // Each refused value is named with the key it was given for.
    for (var, value, key, named) in [
        (
            "FIREBREAK_QUIET_PERIOD",
            "soon",
            "incidents.quiet_period",
            "soon",
        ),
        // A publish timeout too short to reach any broker.
        (
            "FIREBREAK_AMQP_PUBLISH_TIMEOUT",
            "10ms",
            "amqp.publish_timeout",
            "100ms",
        ),
    ] {
        let stderr = refused(firebreak().arg("serve").env(var, value));
        assert!(
            stderr.contains(key) && stderr.contains(named),
            "{var}={value}: {stderr}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("firebreak.toml");
    std::fs::write(&file, "[engine]\nworkerz = 2\n").unwrap();
    let stderr = refused(firebreak().args(["serve", "--config"]).arg(&file));
    assert!(stderr.contains("workerz"), "{stderr}");
}

#[test]
fn migrate_creates_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    succeeds(firebreak().args(["migrate", "--data-dir"]).arg(dir.path()));
    assert!(dir.path().join("firebreak.db").exists());
    // Twice is fine.
    succeeds(firebreak().args(["migrate", "--data-dir"]).arg(dir.path()));
}

#[test]
fn unreachable_listen_address_is_explained() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = firebreak()
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot listen on") && stderr.contains("--listen"),
        "{stderr}"
    );
}

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// The playbooks shipped in playbooks/ load with no configuration at all (a
/// newcomer's first `playbooks check`), and the ones that need a provider
/// load against the configuration beside them.
#[test]
fn playbooks_check_passes_on_the_examples() {
    let out = firebreak()
        .args(["playbooks", "check"])
        .arg(repo("playbooks"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["checkout-kill-switch", "payments-latency-notify"] {
        assert!(stdout.contains(name), "{stdout}");
    }
    let out = firebreak()
        .args(["--config"])
        .arg(repo("playbooks/with-argocd/firebreak.toml"))
        .args(["playbooks", "check"])
        .arg(repo("playbooks/with-argocd"))
        .env("FIREBREAK_SECRET_ARGOCD_TOKEN", "test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("canary-rollback"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn playbooks_check_fails_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.yaml"),
        "name: good\nwhen:\n  alert: { matchers: ['alertname=\"A\"'] }\ndo:\n  - kill_switch: { flag: f }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: bad\nwhen:\n  alert:\n    matchers: ['service=~\"(\"']\ndo:\n  - kill_switch: { flag: f }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("provider.yml"),
        "name: provider\nwhen:\n  gate: {}\ndo:\n  - rollback: { provider: nowhere }\n",
    )
    .unwrap();
    let out = firebreak()
        .args(["playbooks", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bad = format!("{}:4:", dir.path().join("bad.yaml").display());
    assert!(
        stderr.contains(&bad) && stderr.contains("bad regular expression"),
        "{stderr}"
    );
    let provider = format!("{}:5:", dir.path().join("provider.yml").display());
    assert!(
        stderr.contains(&provider) && stderr.contains("[rollback.nowhere]"),
        "{stderr}"
    );
    assert!(stderr.contains("2 of 3 files have errors"), "{stderr}");
}

/// `playbooks test` shows what would happen for a deploy and an alert, and
/// touches nothing (no data directory appears).
#[test]
fn playbooks_test_explains_matches_without_side_effects() {
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now();
    let deploy = dir.path().join("deploy.json");
    std::fs::write(
        &deploy,
        serde_json::json!({"service": "checkout", "version": "v2", "status": "succeeded",
                           "started_at": (now - chrono::Duration::minutes(7)).to_rfc3339()})
        .to_string(),
    )
    .unwrap();
    let alert = dir.path().join("alert.json");
    std::fs::write(
        &alert,
        serde_json::json!({"version": "4", "status": "firing", "receiver": "r", "groupKey": "g",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
            "alerts": [{"status": "firing", "labels": {"alertname": "HighErrorRate", "service": "checkout"},
                        "annotations": {}, "startsAt": now.to_rfc3339(), "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "", "fingerprint": "f1"}]})
        .to_string(),
    )
    .unwrap();
    let out = firebreak()
        .current_dir(dir.path())
        .args(["playbooks", "test", "--event"])
        .arg(&deploy)
        .arg("--event")
        .arg(&alert)
        .arg(repo("playbooks"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("+ checkout-kill-switch@"), "{stdout}");
    assert!(
        stdout.contains("turn off flag checkout.new-payment-flow (builtin)"),
        "{stdout}"
    );
    assert!(stdout.contains("cooldown 30m"), "{stdout}");
    assert!(!dir.path().join("data").exists(), "no side effects");

    // Without the deploy, the same alert matches but does not act.
    let out = firebreak()
        .args(["playbooks", "test", "--event"])
        .arg(&alert)
        .arg(repo("playbooks"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("- checkout-kill-switch matched but would not act"),
        "{stdout}"
    );
}

#[test]
fn admin_commands_on_a_fresh_machine_create_the_data_directory() {
    // `firebreak tokens create` in a directory with no ./data: the embedded
    // default is made, not retried for a minute.
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let stdout = succeeds(
        firebreak()
            .current_dir(dir.path())
            .args(["tokens", "create", "--name", "ci", "--scope", "read"]),
    );
    assert!(dir.path().join("data").join("firebreak.db").exists());
    assert!(stdout.contains("fbk_"), "{stdout}");

    // A SQLite file whose directory cannot exist fails at once, naming the fix.
    let out = firebreak()
        .current_dir(dir.path())
        .args(["tokens", "list"])
        .env(
            "FIREBREAK_DATABASE_URL",
            "sqlite:///proc/no-such-dir/firebreak.db",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot open the SQLite database")
            && stderr.contains("FIREBREAK_DATABASE_URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("retrying"), "{stderr}");
    println!("fresh-machine admin commands took {:?}", started.elapsed());
}

#[test]
fn weak_admin_passwords_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for password in ["admin-admin-admin", "password12345678"] {
        let out = firebreak()
            .current_dir(dir.path())
            .args(["users", "create", "--name", "admin", "--role", "admin"])
            .env("FIREBREAK_USER_PASSWORD", password)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{password}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("the password"), "{stderr}");
    }
}

#[test]
fn a_process_waiting_for_its_broker_stops_at_once_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the broker "is not up yet", and serve keeps
    // trying for a minute.
    let mut child = firebreak()
        .args(["serve"])
        .env("FIREBREAK_DATA_DIR", dir.path())
        .env("FIREBREAK_LISTEN", "127.0.0.1:0")
        .env("FIREBREAK_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "still waiting for the broker"
    );
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let asked = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(3),
            "SIGTERM did not stop a process waiting for its broker"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("stopped while waiting for the broker"),
        "{stderr}"
    );
}
