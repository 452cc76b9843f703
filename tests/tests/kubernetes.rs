//! The Kubernetes manifests (deploy/kubernetes), checked offline: rendered
//! by `kubectl kustomize` (Debian's kubectl), validated against the
//! Kubernetes schemas of `kubernetes-validate` (PyPI) in strict mode, and
//! read for what they promise: the same roles as docker-compose.yml and the
//! topology test (tests/tests/ha.rs), probes on /healthz and /readyz,
//! secrets by reference, a grace period for the drain, a disruption budget
//! per role, and the repository's playbooks.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kustomize(dir: &str) -> String {
    let out = Command::new("kubectl")
        .args(["kustomize", repo().join(dir).to_str().unwrap()])
        .output()
        .expect("kubectl runs (bash tests/run installs Debian's kubectl)");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn validate(name: &str, rendered: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, rendered).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.37"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate runs (bash tests/run installs it from PyPI)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} is not valid:\n{text}");
    assert!(!text.contains("ERROR"), "{name}:\n{text}");
}

/// The documents of a rendered stream, split at `---`.
fn documents(rendered: &str) -> Vec<&str> {
    rendered
        .split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .collect()
}

fn of_kind<'a>(docs: &[&'a str], kind: &str) -> Vec<&'a str> {
    docs.iter()
        .copied()
        .filter(|d| d.lines().any(|l| l == format!("kind: {kind}")))
        .collect()
}

#[test]
fn the_split_install_renders_validates_and_matches_the_tested_topology() {
    let rendered = kustomize("deploy/kubernetes/base");
    validate("base", &rendered);
    let docs = documents(&rendered);
    let deployments = of_kind(&docs, "Deployment");
    let mut roles: Vec<String> = deployments
        .iter()
        .map(|d| {
            let at = d.find("name: FIREBREAK_ROLES").unwrap();
            d[at..]
                .lines()
                .nth(1)
                .unwrap()
                .trim()
                .trim_start_matches("value: ")
                .to_string()
        })
        .collect();
    roles.sort();
    assert_eq!(roles, ["api", "engine", "ingest"]);
    // The same roles as the compose file runs.
    let compose = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    for role in &roles {
        assert!(
            compose.contains(&format!("FIREBREAK_ROLES: {role}")),
            "docker-compose.yml runs the {role} role too"
        );
    }
    for d in &deployments {
        assert!(
            d.contains("path: /healthz") && d.contains("path: /readyz"),
            "{d}"
        );
        assert!(d.contains("terminationGracePeriodSeconds: 30"), "{d}");
        assert!(
            d.contains("replicas: 2"),
            "two of each role, as tests/tests/ha.rs runs: {d}"
        );
        for secret in ["database-url", "amqp-url", "admin-token", "audit-key"] {
            assert!(
                d.contains(&format!("key: {secret}")),
                "{secret} comes from the Secret: {d}"
            );
        }
        assert!(
            d.contains("requests:") && d.contains("memory: 512Mi"),
            "{d}"
        );
    }
    let budgets = of_kind(&docs, "PodDisruptionBudget");
    assert_eq!(budgets.len(), 3, "one disruption budget per role");
    assert_eq!(of_kind(&docs, "Service").len(), 2, "ingest and api");
    // No secret value is written in the manifests.
    assert!(!rendered.contains("bootstrap") && !rendered.contains("password"));
}

#[test]
fn the_single_process_install_renders_and_validates() {
    let rendered = kustomize("deploy/kubernetes/overlays/single");
    validate("single", &rendered);
    let docs = documents(&rendered);
    let deployments = of_kind(&docs, "Deployment");
    assert_eq!(deployments.len(), 1);
    let d = deployments[0];
    assert!(
        d.contains("replicas: 1") && d.contains("type: Recreate"),
        "{d}"
    );
    assert!(
        !d.contains("FIREBREAK_ROLES") && !d.contains("FIREBREAK_DATABASE_URL"),
        "every role, on the embedded store: {d}"
    );
    assert!(d.contains("claimName: firebreak-data"), "{d}");
    assert_eq!(of_kind(&docs, "PersistentVolumeClaim").len(), 1);
}

#[test]
fn the_manifests_ship_the_repositorys_playbooks() {
    let component = repo().join("deploy/kubernetes/components/playbooks");
    for name in ["checkout-kill-switch.yaml", "payments-latency-notify.yaml"] {
        assert_eq!(
            std::fs::read_to_string(component.join(name)).unwrap(),
            std::fs::read_to_string(repo().join("playbooks").join(name)).unwrap(),
            "{name} in deploy/kubernetes/components/playbooks is a copy of playbooks/{name}: copy it again"
        );
    }
}

/// docker-compose.yml runs the topology the manifests describe and the
/// topology test drives: two processes of each role, behind an HAProxy whose
/// configuration Debian's haproxy accepts (`haproxy -c`).
#[test]
fn the_compose_file_runs_the_same_topology_behind_a_valid_proxy() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let mut compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    compose.apply_merge().unwrap();
    let services = &compose["services"];
    for role in ["ingest", "engine", "api"] {
        let service = &services[format!("firebreak-{role}").as_str()];
        let env = &service["environment"];
        // The anchors merge: every role gets the shared settings.
        let env = {
            let mut env = env.clone();
            env.apply_merge().unwrap();
            env
        };
        assert_eq!(env["FIREBREAK_ROLES"].as_str(), Some(role), "{service:?}");
        assert!(env["FIREBREAK_DATABASE_URL"].is_string(), "{role}: {env:?}");
        assert_eq!(
            service["deploy"]["replicas"].as_u64(),
            Some(2),
            "two {role} processes, as tests/tests/ha.rs runs and deploy/kubernetes/base describes"
        );
        assert!(
            service["ports"].is_null(),
            "{role}: replicas publish no port of their own (the proxy does)"
        );
    }
    let ports: Vec<&str> = services["proxy"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(ports, ["8080:8080", "8081:8081", "8404:8404"]);

    let cfg = std::fs::read_to_string(repo().join("deploy/compose/haproxy.cfg")).unwrap();
    for (backend, service) in [("ingest", "firebreak-ingest"), ("api", "firebreak-api")] {
        assert!(
            cfg.contains(&format!("server-template {backend} 2 {service}:8080")),
            "HAProxy balances over both {service} replicas"
        );
    }
    assert!(
        cfg.contains("option httpchk GET /readyz"),
        "a draining process is taken out"
    );
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(repo().join("deploy/compose/haproxy.cfg"))
        .output()
        .expect("haproxy runs (bash tests/run installs Debian's haproxy)");
    assert!(
        out.status.success(),
        "haproxy -c deploy/compose/haproxy.cfg: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
