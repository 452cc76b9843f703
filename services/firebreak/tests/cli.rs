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

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let out = firebreak()
        .args(["serve"])
        .env("FIREBREAK_QUIET_PERIOD", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("incidents.quiet_period") && stderr.contains("soon"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("firebreak.toml");
    std::fs::write(&file, "[engine]\nworkerz = 2\n").unwrap();
    let out = firebreak()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("workerz"), "{stderr}");
}

#[test]
fn migrate_creates_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = firebreak()
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("firebreak.db").exists());
    // Twice is fine.
    let again = firebreak()
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(again.status.success());
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
