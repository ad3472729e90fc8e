//! The systemd integration: the unit file as systemd itself reads it, and the notify
//! protocol of the real binary talking to a stand-in service manager (a Unix datagram
//! socket in `NOTIFY_SOCKET`) while it polls the simulator.

// Test code, helpers included: a failed set-up step should panic where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use relay_sim::{ApiFault, FaultKind};
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use util::*;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/xdr-relay.service");

/// `systemd-analyze`, which scripts/test installs: a missing one fails the test rather than
/// skipping it, so CI cannot pass without having checked the unit.
fn systemd_analyze() -> &'static str {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "systemd-analyze is missing: install the `systemd` package (scripts/test does)"
    );
    "systemd-analyze"
}

/// The unit as shipped, with the binary paths pointing at this build, written to `dir`
/// (`systemd-analyze verify` checks that every Exec* command exists).
fn unit_for_this_build(dir: &Path, text: &str) -> PathBuf {
    let unit = text.replace("/usr/bin/xdr-relay", &bin());
    let path = dir.join("xdr-relay.service");
    fs::write(&path, unit).unwrap();
    path
}

/// `systemd-analyze verify` of `unit`: its exit status and every line of output that is
/// about the unit (unknown keys or sections, values it cannot parse, missing commands).
fn verify(unit: &Path) -> (bool, Vec<String>, String) {
    let out = Command::new(systemd_analyze())
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let name = unit.file_name().unwrap().to_string_lossy().into_owned();
    let problems = text
        .lines()
        .filter(|l| {
            l.contains(&name)
                || l.contains("Unknown")
                || l.contains("ignoring")
                || l.contains("Failed to parse")
        })
        .map(str::to_owned)
        .collect();
    (out.status.success(), problems, text)
}

#[test]
fn unit_file_passes_systemd_analyze_verify_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = fs::read_to_string(UNIT).unwrap();
    let unit = unit_for_this_build(dir.path(), &shipped);
    let (ok, problems, text) = verify(&unit);
    assert!(ok, "systemd-analyze verify failed:\n{text}");
    assert!(problems.is_empty(), "systemd-analyze verify:\n{text}");

    // The check catches what it is for: a misspelt directive is reported.
    let typo = shipped.replace("ProtectSystem=strict", "ProtectSytem=strict");
    let (_, problems, text) = verify(&unit_for_this_build(dir.path(), &typo));
    assert!(
        problems.iter().any(|l| l.contains("ProtectSytem")),
        "a misspelt key went unnoticed:\n{text}"
    );
}

#[test]
fn unit_file_declares_the_notify_protocol_and_is_hardened() {
    let shipped = fs::read_to_string(UNIT).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=60s",
        "ExecStartPre=/usr/bin/xdr-relay check-config --config /etc/xdr-relay/relay.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=xdr-relay",
        "ConfigurationDirectory=xdr-relay",
        "LoadCredential=state-key:/etc/xdr-relay/secrets/state-key",
        "Restart=on-failure",
        "UMask=077",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "SystemCallArchitectures=native",
    ] {
        assert!(
            shipped.lines().any(|l| l == line),
            "the unit lacks `{line}`"
        );
    }
    // systemd's own rating of the whole sandbox: 0 (locked down) to 10 (unprotected). The
    // unit rates 1.2 with Debian 12's systemd 252; dropping the system call filter alone
    // makes it 1.7. So a threshold of 1.5 also catches weakenings the list above does not
    // name; dropping the filter shows that it bites.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path(), &shipped);
    let out = Command::new(systemd_analyze())
        .args(["security", "--offline=true", "--threshold=15"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exposure above 1.5:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let weakened = shipped.replace("SystemCallFilter=@system-service\n", "");
    let out = Command::new(systemd_analyze())
        .args(["security", "--offline=true", "--threshold=15"])
        .arg(unit_for_this_build(dir.path(), &weakened))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the exposure check cannot fail");
}

/// One datagram the stand-in service manager received.
#[derive(Debug, Clone)]
struct Notification {
    at: Instant,
    lines: Vec<String>,
}

/// A stand-in for systemd's notification socket: records every datagram with its arrival
/// time.
struct FakeManager {
    path: PathBuf,
    received: Arc<Mutex<Vec<Notification>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl FakeManager {
    fn bind(dir: &Path) -> FakeManager {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let received = Arc::clone(&received);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        received.lock().unwrap().push(Notification {
                            at: Instant::now(),
                            lines: text.lines().map(str::to_owned).collect(),
                        });
                    }
                }
            })
        };
        FakeManager {
            path,
            received,
            stop,
            reader: Some(reader),
        }
    }

    fn all(&self) -> Vec<Notification> {
        self.received.lock().unwrap().clone()
    }

    /// When the first datagram carrying `line` arrived.
    fn first(&self, line: &str) -> Option<Instant> {
        self.all()
            .into_iter()
            .find(|n| n.lines.iter().any(|l| l == line))
            .map(|n| n.at)
    }

    /// Arrival times of every datagram carrying `line`.
    fn times(&self, line: &str) -> Vec<Instant> {
        self.all()
            .into_iter()
            .filter(|n| n.lines.iter().any(|l| l == line))
            .map(|n| n.at)
            .collect()
    }

    /// Every `STATUS=` text with its arrival time.
    fn statuses(&self) -> Vec<(Instant, String)> {
        self.all()
            .into_iter()
            .flat_map(|n| {
                n.lines
                    .into_iter()
                    .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_owned))
                    .map(move |s| (n.at, s))
            })
            .collect()
    }

    async fn wait_for(&self, line: &str, timeout: Duration) -> Instant {
        assert!(
            wait_for(timeout, || self.first(line).is_some()).await,
            "no {line} within {timeout:?}; received {:?}",
            self.all()
        );
        self.first(line).unwrap()
    }
}

impl Drop for FakeManager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// systemd's `WATCHDOG_USEC` for these tests: keep-alives are expected every second.
const WATCHDOG: Duration = Duration::from_secs(2);

/// The stall budget both protocol tests give the daemon: longer than a healthy relay
/// polling every 10 s ever goes without a poll ending, far shorter than the stuck API.
const STALL_BUDGET: Duration = Duration::from_secs(15);

/// `xdr-relay run` as systemd would start it, notifying `manager`.
fn spawn_notified(h: &Harness, manager: &FakeManager) -> Child {
    let log = fs::File::create(h.path("relay-0.log")).unwrap();
    Command::new(bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(h.config_path())
        .args(["--watchdog-stall-secs", &STALL_BUDGET.as_secs().to_string()])
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &manager.path)
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        // Unset, the watchdog applies to the process systemd started: this one.
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Waits for the child to exit; its exit code.
async fn exit_code(child: &mut Child, timeout: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("xdr-relay did not exit within {timeout:?} of SIGTERM");
}

/// The number before " events" in a status line.
fn events_in(status: &str) -> u64 {
    status
        .split(", ")
        .find_map(|part| part.strip_suffix(" events"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no event count in {status:?}"))
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep(t.saturating_duration_since(Instant::now())).await;
}

/// READY=1 once the relay is built (the state store exists by then), STATUS= lines, a
/// keep-alive every half watchdog interval all along — well past the stall budget, because
/// polls keep ending — and STOPPING=1 after SIGTERM, then a clean exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_ready_status_keepalives_and_stopping() {
    let h = Harness::start(Setup::default()).await;
    let manager = FakeManager::bind(h.dir.path());
    let mut relay = KillOnDrop(spawn_notified(&h, &manager));

    let ready = manager.wait_for("READY=1", Duration::from_secs(60)).await;
    assert!(
        h.path("state.db").exists(),
        "READY=1 before the state store was opened"
    );
    let (_, first_status) = manager.statuses().into_iter().next().unwrap();
    assert!(
        first_status.starts_with("4 tenants, 0 events"),
        "{first_status}"
    );

    let until = ready + STALL_BUDGET + Duration::from_secs(10);
    sleep_until(until).await;
    let pings: Vec<Instant> = manager
        .times("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t > ready)
        .collect();
    let log = h.log(0);
    assert!(!pings.is_empty(), "no keep-alive at all\n{log}");
    // systemd wants one within every WATCHDOG; a loaded CI machine gets a second of slack.
    let mut previous = ready;
    for t in pings.iter().copied().chain([until]) {
        let gap = t - previous;
        assert!(
            gap <= WATCHDOG + Duration::from_secs(1),
            "{gap:?} without a keep-alive, {:?} after READY\n{log}",
            previous - ready
        );
        previous = t;
    }
    let (_, last_status) = manager.statuses().pop().unwrap();
    assert!(
        events_in(&last_status) > 0,
        "polls delivered nothing: {last_status}"
    );
    assert!(!last_status.contains("stalled"), "{last_status}");

    assert!(manager.first("STOPPING=1").is_none());
    signal(&relay.0, "TERM");
    manager
        .wait_for("STOPPING=1", Duration::from_secs(30))
        .await;
    assert_eq!(
        exit_code(&mut relay.0, Duration::from_secs(60)).await,
        Some(0)
    );
}

/// Every tenant's API holds its answers back far longer than the test runs (and than the
/// request timeout, set even longer), so no poll ends and no page is committed: after the
/// stall budget the keep-alives stop — systemd would restart the relay — while STATUS=
/// lines keep coming and say why. Same daemon, same budget as the test above; only the
/// API differs, so the silence is the rule at work, not a dead notifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keepalive_once_polls_are_stuck_past_the_stall_budget() {
    let mut setup = Setup::default();
    setup.files.extra_toml = "[http]\nrequest_timeout_secs = 900\n".to_string();
    let h = Harness::start(setup).await;
    for t in h.sim.tenants() {
        h.sim
            .set_fault(
                &t.tenant_id,
                ApiFault::new(FaultKind::Slow {
                    delay: Duration::from_secs(900),
                }),
            )
            .unwrap();
    }
    let manager = FakeManager::bind(h.dir.path());
    let mut relay = KillOnDrop(spawn_notified(&h, &manager));

    let ready = manager.wait_for("READY=1", Duration::from_secs(60)).await;
    // The budget runs from start-up; allow two ticks for the last keep-alive in it to land.
    let silent_from = ready + STALL_BUDGET + WATCHDOG;
    let until = silent_from + 4 * WATCHDOG;
    sleep_until(until).await;

    let log = h.log(0);
    let pings = manager.times("WATCHDOG=1");
    assert!(
        pings
            .iter()
            .any(|t| *t > ready && *t < ready + STALL_BUDGET),
        "no keep-alive even within the stall budget\n{log}"
    );
    let late: Vec<Duration> = pings
        .iter()
        .filter(|t| **t >= silent_from)
        .map(|t| *t - ready)
        .collect();
    assert!(
        late.is_empty(),
        "keep-alives at {late:?} after READY although no poll ended\n{log}"
    );
    let stalled: Vec<String> = manager
        .statuses()
        .into_iter()
        .filter(|(t, _)| *t >= silent_from)
        .map(|(_, s)| s)
        .collect();
    assert!(
        stalled.len() >= 3 && stalled.iter().all(|s| s.starts_with("stalled: ")),
        "status lines while stuck: {stalled:?}"
    );
    assert!(
        log.contains("withholding the watchdog keep-alive"),
        "the stall was not logged\n{log}"
    );

    // Shutdown does not wait for the stuck requests.
    signal(&relay.0, "TERM");
    manager
        .wait_for("STOPPING=1", Duration::from_secs(30))
        .await;
    assert_eq!(
        exit_code(&mut relay.0, Duration::from_secs(60)).await,
        Some(0)
    );
}
