//! Test support for the end-to-end tests: a simulator in this process, a configuration
//! directory pointing at it, the real `xdr-relay` binary as a child process, and readers
//! for what the file sink wrote.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub use relay_sim::api_of;
use relay_sim::{GroundTruthVersion, RelayFiles, Sim, SimConfig};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test; `XDR_RELAY_TEST_BIN` names another build (to check that a
/// regression test fails on the build before its fix).
pub fn bin() -> String {
    std::env::var("XDR_RELAY_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_xdr-relay").to_owned())
}

/// Knobs of one end-to-end run.
#[derive(Debug, Clone)]
pub struct Setup {
    pub sim: SimConfig,
    pub files: RelayFiles,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            sim: SimConfig {
                tenants: 4,
                seed: 11,
                backlog: 20,
                backlog_span: Duration::from_secs(1_800),
                ..SimConfig::default()
            },
            files: RelayFiles {
                poll_interval_secs: 10,
                overlap_secs: 120,
                availability_lag_secs: 0,
                first_fetch_hours: 1,
                ..RelayFiles::default()
            },
        }
    }
}

/// A simulator plus a configuration directory for the relay.
pub struct Harness {
    pub sim: Sim,
    pub dir: tempfile::TempDir,
    pub setup: Setup,
}

/// One version the file sink delivered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Delivered {
    pub tenant_id: String,
    pub feed: String,
    pub id: String,
    pub version_time: String,
}

impl Harness {
    pub async fn start(setup: Setup) -> Harness {
        let sim = Sim::start(setup.sim.clone())
            .await
            .expect("simulator starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let h = Harness { sim, dir, setup };
        h.write_config();
        h
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("relay.toml")
    }

    pub fn sink_dir(&self) -> PathBuf {
        self.path("events")
    }

    fn write_config(&self) {
        let mut files = self.setup.files.clone();
        // Test binaries run many relays at once: each gets a free admin port of its own
        // unless the test picked one (the default, 9464, would be taken by the first).
        if !files.extra_toml.contains("[admin]") {
            files
                .extra_toml
                .push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
        }
        self.sim
            .write_relay_config(self.dir.path(), &files)
            .expect("configuration written");
    }

    /// Starts `xdr-relay run` on this configuration; its output goes to `relay-N.log`.
    pub fn spawn_relay(&self, n: usize) -> Child {
        let log = fs::File::create(self.path(&format!("relay-{n}.log"))).unwrap();
        Command::new(bin())
            .args(["--log-format", "json", "run", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("xdr-relay starts")
    }

    pub fn log(&self, n: usize) -> String {
        fs::read_to_string(self.path(&format!("relay-{n}.log"))).unwrap_or_default()
    }

    /// Runs `xdr-relay <args> --config relay.toml` to completion.
    pub fn run_cmd(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .output()
            .expect("xdr-relay runs")
    }

    /// Every version the file sink holds, in file order, duplicates kept.
    pub fn delivered(&self) -> Vec<Delivered> {
        read_sink_dir(&self.sink_dir())
    }

    /// The simulator's ground truth as the file sink spells it, limited to the feeds each
    /// tenant is configured for (every tenant's world is served on all four feeds).
    pub fn ground_truth(&self) -> Vec<Delivered> {
        self.polled(&self.sim.ground_truth())
    }

    /// The versions a daemon polling every few seconds must deliver (see
    /// [`Sim::ground_truth_dwelling`]), limited like [`Harness::ground_truth`].
    pub fn must_deliver(&self, min_dwell: Duration) -> Vec<Delivered> {
        self.polled(&self.sim.ground_truth_dwelling(min_dwell))
    }

    /// [`must_deliver`](Self::must_deliver) for a tenant the daemon only started polling
    /// at `since` (added by a reload).
    pub fn must_deliver_since(
        &self,
        min_dwell: Duration,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Vec<Delivered> {
        self.polled(&self.sim.ground_truth_dwelling_since(min_dwell, since))
    }

    fn polled(&self, truth: &[GroundTruthVersion]) -> Vec<Delivered> {
        let api: BTreeMap<&str, &str> = self
            .sim
            .tenants()
            .iter()
            .enumerate()
            .map(|(i, t)| (t.tenant_id.as_str(), api_of(i)))
            .collect();
        truth
            .iter()
            .filter(|v| {
                let want = if v.feed.api() == relay_config::Api::Graph {
                    "graph"
                } else {
                    "defender"
                };
                api.get(v.tenant_id.as_str()) == Some(&want)
            })
            .map(to_delivered)
            .collect()
    }
}

pub fn to_delivered(v: &GroundTruthVersion) -> Delivered {
    Delivered {
        tenant_id: v.tenant_id.clone(),
        feed: v.feed.as_str().to_string(),
        id: v.id.clone(),
        version_time: format!(
            "{}.{:07}Z",
            v.last_update.format("%Y-%m-%dT%H:%M:%S"),
            v.last_update.timestamp_subsec_nanos() / 100
        ),
    }
}

/// Reads every `*.jsonl` file of the file sink's directory.
pub fn read_sink_dir(dir: &Path) -> Vec<Delivered> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let reader = BufReader::new(fs::File::open(&f).unwrap());
        for line in reader.lines() {
            let line = line.unwrap();
            if line.is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line:.200}", f.display()));
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            out.push(Delivered {
                tenant_id: s("tenant_id"),
                feed: s("feed"),
                id: s("id"),
                version_time: s("version_time"),
            });
        }
    }
    out
}

/// Compares delivered versions with the ground truth: (missing, duplicated, unexpected).
pub fn compare(
    delivered: &[Delivered],
    truth: &[Delivered],
) -> (Vec<Delivered>, Vec<(Delivered, usize)>, Vec<Delivered>) {
    let mut counts: BTreeMap<&Delivered, usize> = BTreeMap::new();
    for d in delivered {
        *counts.entry(d).or_default() += 1;
    }
    let truth_set: std::collections::BTreeSet<&Delivered> = truth.iter().collect();
    let missing = truth
        .iter()
        .filter(|t| !counts.contains_key(t))
        .cloned()
        .collect();
    let dups = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(d, n)| ((*d).clone(), *n))
        .collect();
    let unexpected = counts
        .keys()
        .filter(|d| !truth_set.contains(*d))
        .map(|d| (*d).clone())
        .collect();
    (missing, dups, unexpected)
}

/// Waits until `cond` holds or `timeout` passes; returns whether it held.
pub async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cond()
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{sig} failed");
}

/// Kills the child on drop, so a failing test leaves no daemon behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
