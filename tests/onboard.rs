//! `xdr-relay onboard` end to end: the real binary against the simulator in this process,
//! with a configuration directory the simulator wrote (minus the tenant being onboarded).
//! The browser is a reqwest client that follows redirects; nothing but 127.0.0.1 is
//! reached (`localhost` in the redirect URI is pinned to 127.0.0.1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_config::Feed;
use relay_sim::{ApiFault, FaultKind, RelayFiles, Sim, SimConfig, SimTenant};
use relay_state::{AuthState, StateKey, StateStore, StoreOptions};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_xdr-relay")
}

/// A simulator and a configuration directory for it.
struct World {
    sim: Sim,
    dir: tempfile::TempDir,
}

impl World {
    /// Three simulated tenants; only the tenant files of `keep` (indices) stay.
    async fn start(keep: &[usize]) -> World {
        let sim = Sim::start(SimConfig {
            tenants: 3,
            seed: 23,
            backlog: 8,
            backlog_span: Duration::from_secs(3_600),
            activity: 0,
            device_code_interval: Duration::from_secs(1),
            ..SimConfig::default()
        })
        .await
        .expect("simulator starts");
        let dir = tempfile::tempdir().expect("temp dir");
        sim.write_relay_config(dir.path(), &RelayFiles::default())
            .expect("config written");
        for (i, t) in sim.tenants().iter().enumerate() {
            if !keep.contains(&i) {
                std::fs::remove_file(dir.path().join(format!("tenants.d/{}.toml", t.name)))
                    .expect("tenant file removed");
            }
        }
        World { sim, dir }
    }

    fn tenant(&self, i: usize) -> &SimTenant {
        &self.sim.tenants()[i]
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self) -> String {
        self.path("relay.toml").display().to_string()
    }

    fn tenant_file(&self, name: &str) -> PathBuf {
        self.path(&format!("tenants.d/{name}.toml"))
    }

    /// `onboard` arguments for simulated tenant `i` under `name`.
    fn onboard_args(&self, i: usize, name: &str) -> Vec<String> {
        let t = self.tenant(i);
        [
            "onboard",
            "--config",
            &self.config(),
            "--name",
            name,
            "--tenant-id",
            &t.tenant_id,
            "--client-id",
            &t.client_id,
            "--base-url",
            self.sim.base_url().as_str(),
            "--sinks",
            "file",
            "--no-browser-wait-secs",
            "60",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn store(&self) -> StateStore {
        let key = StateKey::from_file(&self.path("state.key")).expect("state key");
        StateStore::open(&self.path("state.db"), Some(&key), StoreOptions::default())
            .expect("state store opens")
    }

    /// Distinct items of `feed` the simulator holds for tenant `i`.
    fn items(&self, i: usize, feed: Feed) -> usize {
        let tid = &self.tenant(i).tenant_id;
        self.sim
            .ground_truth()
            .into_iter()
            .filter(|v| &v.tenant_id == tid && v.feed == feed)
            .map(|v| v.id)
            .collect::<BTreeSet<_>>()
            .len()
    }

    fn check_config(&self) -> (i32, String) {
        let out = std::process::Command::new(bin())
            .args(["check-config", "--config", &self.config()])
            .output()
            .expect("check-config runs");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// The binary running, its stdout readable line by line.
struct Run {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Run {
    fn spawn(args: &[String]) -> Run {
        Run::spawn_env(args, &[])
    }

    fn spawn_env(args: &[String], env: &[(&str, &str)]) -> Run {
        let mut child = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("xdr-relay starts");
        let out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let all = Arc::clone(&stdout);
        tokio::spawn(async move {
            let mut reader = BufReader::new(out).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                all.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text).await;
            text
        });
        Run {
            child,
            lines,
            stdout,
            stderr,
        }
    }

    /// The first stdout line `pick` accepts.
    async fn line(&mut self, pick: impl Fn(&str) -> bool) -> String {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if pick(&line) {
                    return Some(line);
                }
            }
            None
        };
        match tokio::time::timeout(Duration::from_secs(60), wait).await {
            Ok(Some(line)) => line,
            _ => panic!(
                "expected line not printed; stdout so far:\n{}",
                self.stdout.lock().unwrap()
            ),
        }
    }

    /// Waits for the exit: (status, stdout, stderr).
    async fn finish(mut self) -> (i32, String, String) {
        let status = tokio::time::timeout(Duration::from_secs(90), self.child.wait())
            .await
            .expect("onboard exits in time")
            .expect("wait");
        let stderr = self.stderr.await.expect("stderr reader");
        // Let the stdout reader drain what is left.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stdout = self.stdout.lock().unwrap().clone();
        (status.code().unwrap_or(-1), stdout, stderr)
    }
}

/// The browser: follows redirects, and `localhost` means 127.0.0.1.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], 0)))
        .build()
        .unwrap()
}

/// The sign-in or consent URL printed for the simulator at `sim`.
async fn printed_url(run: &mut Run, sim: &Sim, path_part: &str) -> reqwest::Url {
    let base = sim.base_url().to_string();
    let line = run
        .line(|l| l.trim().starts_with(&base) && l.contains(path_part))
        .await;
    reqwest::Url::parse(line.trim()).unwrap()
}

fn param(url: &reqwest::Url, name: &str) -> String {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{url} has no {name}"))
}

fn assert_no_secrets(text: &str, t: &SimTenant) {
    assert!(
        !text.contains(&t.client_secret),
        "client secret leaked:\n{text}"
    );
    assert!(
        !text.contains(&t.refresh_token),
        "refresh token leaked:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_code_flow_onboards_a_tenant_into_an_empty_configuration() {
    let w = World::start(&[]).await;
    let mut run = Run::spawn(&w.onboard_args(0, "contoso"));
    let url = printed_url(&mut run, &w.sim, "/oauth2/v2.0/authorize").await;
    assert_eq!(param(&url, "code_challenge_method"), "S256");
    assert!(param(&url, "scope").contains("offline_access"));
    assert!(param(&url, "redirect_uri").starts_with("http://localhost:"));

    let page = browser().get(url).send().await.expect("browser lands");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("close this tab"));

    let (code, out, err) = run.finish().await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let incidents = w.items(0, Feed::GraphIncidents);
    let alerts = w.items(0, Feed::GraphAlerts);
    assert!(incidents > 0);
    assert!(
        out.contains(&format!(
            "contoso: token OK, {incidents} incidents and {alerts} alerts visible in the last 24 h"
        )),
        "{out}"
    );
    assert!(out.contains("systemctl reload xdr-relay"), "{out}");

    let file = std::fs::read_to_string(w.tenant_file("contoso")).unwrap();
    let toml: toml::Table = file.parse().unwrap();
    assert_eq!(toml["name"].as_str(), Some("contoso"));
    assert_eq!(
        toml["tenant_id"].as_str(),
        Some(w.tenant(0).tenant_id.as_str())
    );
    assert_eq!(toml["auth"]["kind"].as_str(), Some("refresh_token"));
    assert!(toml["auth"].get("refresh_token").is_none(), "{file}");
    assert!(toml["auth"].get("client_secret").is_none(), "{file}");
    assert_no_secrets(&file, w.tenant(0));
    assert_no_secrets(&out, w.tenant(0));

    let store = w.store();
    let rt = store
        .load_refresh_token("contoso")
        .unwrap()
        .expect("refresh token stored");
    assert!(!rt.expose().is_empty());
    assert!(
        !file.contains(rt.expose()) && !out.contains(rt.expose()) && !err.contains(rt.expose())
    );
    assert!(matches!(
        store.auth_state("contoso").unwrap(),
        Some(AuthState::Ok { .. })
    ));
    let (status, text) = w.check_config();
    assert_eq!(status, 0, "{text}");
    assert!(text.contains("1 tenant(s)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_flow_re_onboards_an_existing_tenant_with_force() {
    let w = World::start(&[1]).await;
    let name = w.tenant(1).name.clone();
    let before = std::fs::read_to_string(w.tenant_file(&name)).unwrap();
    assert!(before.contains("refresh_token = { file"));
    let mut args = w.onboard_args(1, &name);
    args.extend(["--device-code", "--force", "--api", "defender"].map(String::from));
    let mut run = Run::spawn(&args);
    let line = run.line(|l| l.contains("for code")).await;
    let code = line
        .split("for code ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("user code printed")
        .to_string();
    assert!(w.sim.entra().approve_device_code(&code), "{line}");

    let (status, out, err) = run.finish().await;
    assert_eq!(status, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("To sign in, use a web browser"), "{out}");
    let incidents = w.items(1, Feed::M365dIncidents);
    let alerts = w.items(1, Feed::MdeAlerts);
    assert!(
        out.contains(&format!(
            "{name}: token OK, {incidents} incidents and {alerts} alerts"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("replaced tenants.d/{name}.toml")),
        "{out}"
    );
    let file = std::fs::read_to_string(w.tenant_file(&name)).unwrap();
    assert!(file.contains("api = \"defender\""), "{file}");
    assert!(!file.contains("refresh_token ="), "{file}");
    let rt = w
        .store()
        .load_refresh_token(&name)
        .unwrap()
        .expect("stored");
    assert_ne!(rt.expose(), w.tenant(1).refresh_token);
    let (status, text) = w.check_config();
    assert_eq!(status, 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_consent_with_a_client_secret_file_writes_a_client_secret_tenant() {
    let w = World::start(&[0]).await;
    std::fs::write(
        w.path("secrets/contoso.secret"),
        format!("{}\n", w.tenant(2).client_secret),
    )
    .unwrap();
    let mut args = w.onboard_args(2, "contoso");
    args.extend(
        [
            "--admin-consent",
            "--client-secret-file",
            &w.path("secrets/contoso.secret").display().to_string(),
        ]
        .map(String::from),
    );
    let mut run = Run::spawn(&args);
    let url = printed_url(&mut run, &w.sim, "/adminconsent?").await;
    assert_eq!(param(&url, "client_id"), w.tenant(2).client_id);
    let page = browser().get(url).send().await.expect("browser lands");
    assert!(page.text().await.unwrap().contains("close this tab"));

    let (status, out, err) = run.finish().await;
    assert_eq!(status, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("client credentials OK"), "{out}");
    assert!(out.contains("contoso: token OK"), "{out}");
    let file = std::fs::read_to_string(w.tenant_file("contoso")).unwrap();
    let toml: toml::Table = file.parse().unwrap();
    assert_eq!(toml["auth"]["kind"].as_str(), Some("client_secret"));
    assert_eq!(
        toml["auth"]["client_secret"]["file"].as_str(),
        Some("secrets/contoso.secret")
    );
    assert_no_secrets(&file, w.tenant(2));
    assert_no_secrets(&out, w.tenant(2));
    assert_no_secrets(&err, w.tenant(2));
    assert_eq!(w.store().load_refresh_token("contoso").unwrap(), None);
    let (status, text) = w.check_config();
    assert_eq!(status, 0, "{text}");
    assert!(text.contains("2 tenant(s)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_device_code_fails_and_writes_nothing() {
    let w = World::start(&[]).await;
    let mut args = w.onboard_args(0, "contoso");
    args.push("--device-code".into());
    let mut run = Run::spawn(&args);
    let line = run.line(|l| l.contains("for code")).await;
    let code = line
        .split("for code ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(w.sim.entra().decline_device_code(code));

    let (status, out, err) = run.finish().await;
    assert_eq!(status, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("tenant contoso") && err.contains("declined"),
        "{err}"
    );
    assert!(!w.tenant_file("contoso").exists());
    assert_eq!(w.store().load_refresh_token("contoso").unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_client_secret_fails_naming_the_aadsts_code() {
    let w = World::start(&[]).await;
    std::fs::write(w.path("secrets/wrong"), "not-the-secret\n").unwrap();
    let mut args = w.onboard_args(0, "contoso");
    args.extend(
        [
            "--admin-consent",
            "--client-secret-file",
            &w.path("secrets/wrong").display().to_string(),
        ]
        .map(String::from),
    );
    let mut run = Run::spawn(&args);
    let url = printed_url(&mut run, &w.sim, "/adminconsent?").await;
    browser().get(url).send().await.expect("browser lands");

    let (status, out, err) = run.finish().await;
    assert_eq!(status, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("AADSTS7000215"), "{err}");
    assert!(err.contains("tenant contoso"), "{err}");
    assert!(err.contains("/oauth2/v2.0/token"), "{err}");
    assert!(err.contains("hint: the client secret is wrong"), "{err}");
    assert!(!err.contains("not-the-secret") && !out.contains("not-the-secret"));
    assert!(!w.tenant_file("contoso").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_consent_on_the_redirect_fails_and_foreign_state_is_ignored() {
    let w = World::start(&[]).await;
    let mut run = Run::spawn(&w.onboard_args(0, "contoso"));
    let url = printed_url(&mut run, &w.sim, "/oauth2/v2.0/authorize").await;
    let state = param(&url, "state");
    let redirect = reqwest::Url::parse(&param(&url, "redirect_uri")).unwrap();

    // A redirect that is not ours is answered and ignored.
    let mut forged = redirect.clone();
    forged.set_query(Some("code=forged&state=not-ours"));
    let answer = browser().get(forged).send().await.unwrap();
    assert_eq!(answer.status(), 400);

    let mut refused = redirect.clone();
    refused
        .query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair(
            "error_description",
            "AADSTS65004: User declined to consent to access the app.\r\nTrace ID: 1",
        )
        .append_pair("state", &state);
    let answer = browser().get(refused).send().await.unwrap();
    assert!(answer.text().await.unwrap().contains("refused"));

    let (status, out, err) = run.finish().await;
    assert_eq!(status, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("tenant contoso"), "{err}");
    assert!(err.contains("access_denied"), "{err}");
    assert!(err.contains("AADSTS65004"), "{err}");
    assert!(err.contains("/oauth2/v2.0/authorize"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(!w.tenant_file("contoso").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_admin_consent_fails() {
    let w = World::start(&[]).await;
    let mut args = w.onboard_args(0, "contoso");
    args.extend(
        [
            "--admin-consent",
            "--client-secret-env",
            "ONBOARD_TEST_SECRET",
        ]
        .map(String::from),
    );
    let mut run = Run::spawn_env(
        &args,
        &[("ONBOARD_TEST_SECRET", w.tenant(0).client_secret.as_str())],
    );
    let url = printed_url(&mut run, &w.sim, "/adminconsent?").await;
    let state = param(&url, "state");
    let mut refused = reqwest::Url::parse(&param(&url, "redirect_uri")).unwrap();
    refused
        .query_pairs_mut()
        .append_pair("error", "permission_denied")
        .append_pair("error_description", "The admin canceled the request")
        .append_pair("state", &state);
    browser().get(refused).send().await.unwrap();

    let (status, out, err) = run.finish().await;
    assert_eq!(status, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("permission_denied: The admin canceled the request"),
        "{err}"
    );
    assert!(!w.tenant_file("contoso").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sign_in_within_the_wait_fails() {
    let w = World::start(&[]).await;
    let mut args = w.onboard_args(0, "contoso");
    let at = args
        .iter()
        .position(|a| a == "--no-browser-wait-secs")
        .unwrap();
    args[at + 1] = "1".into();
    let (status, out, err) = Run::spawn(&args).finish().await;
    assert_eq!(status, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("no sign-in came back") && err.contains("within 1 s"),
        "{err}"
    );
    assert!(!w.tenant_file("contoso").exists());
}

/// Runs `onboard` with arguments that must be refused before anyone signs in.
async fn refused_before_sign_in(args: Vec<String>) -> String {
    let (status, out, err) = Run::spawn(&args).finish().await;
    assert_eq!(status, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        !out.contains("http://"),
        "no sign-in URL may be printed:\n{out}"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_2_before_any_sign_in() {
    let w = World::start(&[0]).await;
    let existing = w.tenant(0).name.clone();
    let before = std::fs::read_to_string(w.tenant_file(&existing)).unwrap();

    // An existing tenant file is not replaced without --force.
    let err = refused_before_sign_in(w.onboard_args(0, &existing)).await;
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(w.tenant_file(&existing)).unwrap(),
        before
    );

    // The same customer under a second name.
    let err = refused_before_sign_in(w.onboard_args(0, "contoso")).await;
    assert!(err.contains("already configured as"), "{err}");

    // No sinks: relay.toml's [defaults] names none.
    let mut args = w.onboard_args(1, "contoso");
    let at = args.iter().position(|a| a == "--sinks").unwrap();
    args.drain(at..at + 2);
    let err = refused_before_sign_in(args).await;
    assert!(err.contains("--sinks is required"), "{err}");

    let mut args = w.onboard_args(1, "contoso");
    let at = args.iter().position(|a| a == "--sinks").unwrap();
    args[at + 1] = "splunk".into();
    let err = refused_before_sign_in(args).await;
    assert!(err.contains("no sink `splunk`"), "{err}");

    let mut args = w.onboard_args(1, "Contoso");
    let err = refused_before_sign_in(args.clone()).await;
    assert!(err.contains("--name"), "{err}");

    args = w.onboard_args(1, "contoso");
    args.push("--admin-consent".into());
    let err = refused_before_sign_in(args).await;
    assert!(err.contains("needs the app's credential"), "{err}");

    // clap: a certificate is for admin consent only.
    let mut args = w.onboard_args(1, "contoso");
    args.extend(["--certificate", "a.pem", "--private-key", "k.pem"].map(String::from));
    refused_before_sign_in(args).await;

    assert!(!w.tenant_file("contoso").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_test_call_takes_the_tenant_file_back() {
    let w = World::start(&[1]).await;
    for i in [0, 1] {
        w.sim
            .set_fault(
                &w.tenant(i).tenant_id,
                ApiFault::new(FaultKind::MalformedJson),
            )
            .unwrap();
    }

    // A new tenant: its file is removed and its refresh token forgotten.
    let mut run = Run::spawn(&w.onboard_args(0, "contoso"));
    let url = printed_url(&mut run, &w.sim, "/oauth2/v2.0/authorize").await;
    browser().get(url).send().await.expect("browser lands");
    let (status, out, err) = run.finish().await;
    assert_eq!(status, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("contoso: token OK, but the test call failed"),
        "{err}"
    );
    assert!(
        err.contains("tenants.d/contoso.toml was removed again"),
        "{err}"
    );
    assert!(!w.tenant_file("contoso").exists());
    assert_eq!(w.store().load_refresh_token("contoso").unwrap(), None);

    // Re-onboarding with --force: the previous file comes back unchanged.
    let name = w.tenant(1).name.clone();
    let before = std::fs::read_to_string(w.tenant_file(&name)).unwrap();
    let mut args = w.onboard_args(1, &name);
    args.extend(["--device-code", "--force"].map(String::from));
    let mut run = Run::spawn(&args);
    let line = run.line(|l| l.contains("for code")).await;
    let code = line
        .split("for code ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(w.sim.entra().approve_device_code(code));
    let (status, out, err) = run.finish().await;
    assert_eq!(status, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains(&format!("the previous tenants.d/{name}.toml was restored")),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(w.tenant_file(&name)).unwrap(),
        before
    );
    let (status, text) = w.check_config();
    assert_eq!(status, 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_consent_given_elsewhere_is_found_by_the_credential_check() {
    // Nobody opens the link here; the simulated app is consented already, as after an
    // administrator consented on a machine that cannot reach this listener.
    let w = World::start(&[]).await;
    std::fs::write(w.path("secrets/app"), &w.tenant(0).client_secret).unwrap();
    let mut args = w.onboard_args(0, "contoso");
    let at = args
        .iter()
        .position(|a| a == "--no-browser-wait-secs")
        .unwrap();
    args[at + 1] = "1".into();
    args.extend(
        [
            "--admin-consent",
            "--client-secret-file",
            &w.path("secrets/app").display().to_string(),
        ]
        .map(String::from),
    );
    let (status, out, err) = Run::spawn(&args).finish().await;
    assert_eq!(status, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("checking whether consent was granted anyway"),
        "{out}"
    );
    assert!(out.contains("client credentials OK"), "{out}");
    assert!(w.tenant_file("contoso").exists());
}
