//! The binary's behaviour on bad input: every problem named by file and key, exit 2,
//! nothing started.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::fs;
use std::process::Command;
use util::*;

fn write_minimal(dir: &std::path::Path, tenant_extra: &str) {
    fs::create_dir_all(dir.join("tenants.d")).unwrap();
    fs::write(
        dir.join("relay.toml"),
        // A free admin port: other test binaries may run a relay at the same time.
        "[state]\npath = \"state.db\"\nkey_file = \"state.key\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[sinks.file]\ntype = \"file\"\npath = \"events\"\n",
    )
    .unwrap();
    fs::write(dir.join("app.secret"), "s3cr3t-value\n").unwrap();
    fs::write(
        dir.join("tenants.d/contoso.toml"),
        format!(
            // Port 9 on loopback: nothing listens, so a poll fails fast and no test
            // traffic ever leaves the machine.
            "tenant_id = \"3f9a1c2e-5b7d-4e8f-9a0b-1c2d3e4f5a6b\"\nsinks = [\"file\"]\n{tenant_extra}\n\
             [cloud]\nbase = \"http://127.0.0.1:9\"\n\
             [auth]\nkind = \"client_secret\"\nclient_id = \"0b4c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3\"\nclient_secret = {{ file = \"app.secret\" }}\n"
        ),
    )
    .unwrap();
}

fn run(args: &[&str], config: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_a_good_configuration() {
    let dir = tempfile::tempdir().unwrap();
    write_minimal(dir.path(), "");
    let (code, out, err) = run(&["check-config"], &dir.path().join("relay.toml"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok (1 tenant(s)"), "{out}");
}

#[test]
fn bad_config_reports_every_problem_with_file_and_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    write_minimal(
        dir.path(),
        "streams = [\"incidents\", \"everything\"]\npoll_interval_secs = 1\n",
    );
    fs::write(
        dir.path().join("tenants.d/fabrikam.toml"),
        "tenant_id = \"not-a-guid\"\nsinks = [\"splunk\"]\n[auth]\nkind = \"client_secret\"\nclient_id = \"x\"\nclient_secret = { env = \"NOPE_NOT_SET\" }\n",
    )
    .unwrap();
    for cmd in ["check-config", "run"] {
        let (code, out, err) = run(&[cmd], &dir.path().join("relay.toml"));
        assert_eq!(code, 2, "{cmd}: {out}{err}");
        for needle in [
            "tenants.d/contoso.toml: streams",
            "tenants.d/contoso.toml: poll_interval_secs",
            "tenants.d/fabrikam.toml: tenant_id",
            "tenants.d/fabrikam.toml: auth.client_id",
            "tenants.d/fabrikam.toml: auth.client_secret",
            "NOPE_NOT_SET",
        ] {
            assert!(err.contains(needle), "{cmd}: no `{needle}` in:\n{err}");
        }
        assert!(!dir.path().join("state.db").exists(), "{cmd} created state");
    }
}

#[test]
fn unreadable_state_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_minimal(dir.path(), "");
    fs::write(
        dir.path().join("state.db"),
        b"this is not a database, it is a text file\n",
    )
    .unwrap();
    let (code, out, err) = run(&["run"], &dir.path().join("relay.toml"));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("state.db"), "{err}");
    let (code, _, err) = run(&["status"], &dir.path().join("relay.toml"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("state.db"), "{err}");
}

#[test]
fn wrong_state_key_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    write_minimal(dir.path(), "");
    let config = dir.path().join("relay.toml");
    // A first start creates the key and the state file; the process is then stopped.
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !dir.path().join("state.db").exists() && t0.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    fs::write(dir.path().join("state.key"), "ab".repeat(32)).unwrap();
    let (code, out, err) = run(&["run"], &config);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("key"), "{err}");
    assert!(
        err.contains("state.db") || err.contains("state.key"),
        "{err}"
    );
}
