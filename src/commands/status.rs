//! `xdr-relay status`: what the daemon has done, read from the state store (safe while
//! the daemon runs: the store is opened read-only and SQLite's WAL lets readers in).

use anyhow::Context;
use chrono::{DateTime, Utc};
use relay_admin::health::{CredentialHealth, CredentialReport, TenantSignals};
use relay_state::{AuthState, StatusSnapshot};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Path of relay.toml.
    #[arg(long, short, default_value = "/etc/xdr-relay/relay.toml")]
    pub config: PathBuf,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Prints per tenant and feed: last poll, checkpoint, lag, errors, auth state; per sink:
/// outbox depth and last delivery; per tenant credential: when it lapses, with a warning
/// and the command that fixes it when that is within 14 days (or consent was revoked).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = match super::state::config_with_state(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let store = match super::state::open(&config, super::state::Access::ReadOnly) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xdr-relay: error: {e:#}");
            return Ok(ExitCode::from(super::check_config::EXIT_BAD_CONFIG));
        }
    };
    let snapshot = store
        .status_snapshot()
        .with_context(|| format!("cannot read {}", config.state.path.display()))?;
    let now = Utc::now();
    let credentials = credential_report(&config, &snapshot, now);
    let actions = action_counts(&store)?;
    if args.json {
        let mut doc = serde_json::to_value(&snapshot)?;
        if let Some(doc) = doc.as_object_mut() {
            doc.insert("credentials".into(), serde_json::to_value(&credentials)?);
            let by_playbook: BTreeMap<String, BTreeMap<&str, u64>> =
                actions
                    .iter()
                    .fold(BTreeMap::new(), |mut m, ((p, t, st), n)| {
                        *m.entry(format!("{p}/{t}"))
                            .or_default()
                            .entry(*st)
                            .or_default() += n;
                        m
                    });
            doc.insert("actions".into(), serde_json::to_value(&by_playbook)?);
        }
        emit(&format!("{}\n", serde_json::to_string_pretty(&doc)?));
    } else {
        emit(&render(&config, &snapshot, now));
        emit(&render_credentials(&config, &credentials, now));
        emit(&render_actions(&actions));
    }
    Ok(ExitCode::SUCCESS)
}

/// Response-action decisions by (playbook, tenant, state), from the journal.
type ActionCounts = BTreeMap<(String, String, &'static str), u64>;

fn action_counts(store: &relay_state::StateStore) -> anyhow::Result<ActionCounts> {
    let mut out = ActionCounts::new();
    for r in store
        .actions_in(&[])
        .context("cannot read the action journal")?
    {
        let d = r.decision;
        *out.entry((d.key.playbook, d.key.tenant, d.state.as_str()))
            .or_default() += 1;
    }
    Ok(out)
}

/// The PLAYBOOKS section (only when a playbook ever decided something).
fn render_actions(counts: &ActionCounts) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if counts.is_empty() {
        return out;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:<24} {:<18} {:>8}  PLAYBOOKS (xdr-relay actions list)",
        "PLAYBOOK", "TENANT", "STATE", "ACTIONS"
    );
    for ((playbook, tenant, state), n) in counts {
        let _ = writeln!(out, "{playbook:<24} {tenant:<24} {state:<18} {n:>8}");
    }
    out
}

/// Credential expiry of every configured tenant, with the auth state and refresh-token
/// save time the daemon last recorded.
fn credential_report(
    config: &relay_config::Config,
    s: &StatusSnapshot,
    now: DateTime<Utc>,
) -> CredentialReport {
    let signals: HashMap<String, TenantSignals> = s
        .tenants
        .iter()
        .map(|t| {
            (
                t.tenant.clone(),
                TenantSignals {
                    refresh_token_saved: t.refresh_token_saved,
                    auth: t.auth.clone(),
                },
            )
        })
        .collect();
    CredentialHealth::new(config, &config.tenants).assess(&signals, now)
}

/// The CREDENTIALS section: every known expiry, then each warning with its fix.
fn render_credentials(
    config: &relay_config::Config,
    report: &CredentialReport,
    now: DateTime<Utc>,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:<14} {:<19} {:>6}  CREDENTIALS (warned {} days ahead)",
        "TENANT",
        "CREDENTIAL",
        "EXPIRES",
        "IN",
        relay_admin::health::WARN_WITHIN.num_days()
    );
    for e in &report.expiries {
        let left = if e.expires_at <= now {
            "LAPSED".to_string()
        } else {
            age(e.expires_at, Some(now))
        };
        let _ = writeln!(
            out,
            "{:<24} {:<14} {:<19} {:>6}",
            e.tenant,
            e.kind.as_str(),
            time(Some(e.expires_at)),
            left
        );
    }
    for tenant in &report.unknown {
        let file = config
            .tenant(tenant)
            .map(|t| t.file.display().to_string())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{tenant:<24} {:<14} unknown: set auth.client_secret_expires in {file} to be warned",
            "client_secret"
        );
    }
    if report.expiries.is_empty() && report.unknown.is_empty() {
        let _ = writeln!(out, "(no credential expiry known yet)");
    }
    for w in &report.warnings {
        let level = if w.is_lapsed(now) { "ERROR" } else { "WARNING" };
        let _ = writeln!(out, "{level} {}: {}", w.tenant, w.describe(now));
        let _ = writeln!(out, "  fix: {}", w.fix);
    }
    out
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".to_string())
}

fn age(now: DateTime<Utc>, t: Option<DateTime<Utc>>) -> String {
    match t {
        None => "-".to_string(),
        Some(t) => {
            let secs = (now - t).num_seconds().max(0);
            if secs < 120 {
                format!("{secs}s")
            } else if secs < 7_200 {
                format!("{}m", secs / 60)
            } else if secs < 172_800 {
                format!("{}h", secs / 3_600)
            } else {
                format!("{}d", secs / 86_400)
            }
        }
    }
}

fn auth_text(auth: Option<&AuthState>, tenant: &str) -> String {
    match auth {
        None => "unknown (no token requested yet)".to_string(),
        Some(AuthState::Ok { since }) => format!("ok since {}", time(Some(*since))),
        Some(AuthState::NeedsConsent {
            code,
            since,
            next_probe,
        }) => format!(
            "NEEDS CONSENT ({code}) since {}{}; fix: the customer's administrator grants \
             consent again, or xdr-relay onboard --name {tenant} ... (polling resumes by itself)",
            time(Some(*since)),
            probe_text(*next_probe)
        ),
        Some(AuthState::Failing {
            error,
            since,
            next_probe,
        }) => {
            format!(
                "failing since {}{}: {error}",
                time(Some(*since)),
                probe_text(*next_probe)
            )
        }
    }
}

/// `, next probe 2026-01-01 10:00:00` (UTC), or nothing when none was recorded.
fn probe_text(next_probe: Option<DateTime<Utc>>) -> String {
    match next_probe {
        Some(at) => format!(", next probe {}", time(Some(at))),
        None => String::new(),
    }
}

/// The status tables as text.
fn render(config: &relay_config::Config, s: &StatusSnapshot, now: DateTime<Utc>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let auth: BTreeMap<&str, Option<&AuthState>> = s
        .tenants
        .iter()
        .map(|t| (t.tenant.as_str(), t.auth.as_ref()))
        .collect();
    let _ = writeln!(out, "state: {}", config.state.path.display());
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:<16} {:<19} {:<19} {:>6}  LAST RESULT",
        "TENANT", "FEED", "LAST POLL", "CHECKPOINT", "LAG"
    );
    for tenant in &config.tenants {
        for feed in tenant.feeds() {
            let row = s
                .feeds
                .iter()
                .find(|f| f.tenant == tenant.name && f.feed == feed.as_str());
            let (last_poll, checkpoint, result) = match row {
                None => (None, None, "never polled".to_string()),
                Some(f) => {
                    let result = match (f.last_poll_ok, &f.last_error) {
                        (Some(true), _) => "ok".to_string(),
                        (Some(false), Some(e)) => format!("error: {}", e.message),
                        (Some(false), None) => "error".to_string(),
                        (None, _) => "never polled".to_string(),
                    };
                    (f.last_poll, f.checkpoint, result)
                }
            };
            let enabled = if tenant.enabled { "" } else { " (disabled)" };
            let _ = writeln!(
                out,
                "{:<24} {:<16} {:<19} {:<19} {:>6}  {result}{enabled}",
                tenant.name,
                feed.as_str(),
                time(last_poll),
                time(checkpoint),
                age(now, checkpoint),
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<24} AUTH", "TENANT");
    for tenant in &config.tenants {
        let a = auth.get(tenant.name.as_str()).copied().flatten();
        let _ = writeln!(out, "{:<24} {}", tenant.name, auth_text(a, &tenant.name));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:>10} {:>12} {:>8} {:<19}  LAST ERROR",
        "SINK", "OUTBOX", "BYTES", "OLDEST", "LAST DELIVERY"
    );
    for name in config.sinks.keys() {
        let row = s.sinks.iter().find(|x| &x.sink == name);
        let (rows, bytes, oldest, last, err) = match row {
            None => (0, 0, None, None, String::new()),
            Some(x) => (
                x.depth.rows,
                x.depth.bytes,
                x.depth.oldest_enqueued,
                x.last_delivery,
                x.last_error
                    .as_ref()
                    .map(|e| format!("{} at {}", e.message, time(Some(e.at))))
                    .unwrap_or_default(),
            ),
        };
        let full = if row.is_some_and(|x| x.depth.over_limit) {
            " (FULL: polling paused)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>12} {:>8} {:<19}  {err}{full}",
            name,
            rows,
            bytes,
            age(now, oldest),
            time(last),
        );
    }
    out
}

/// Writes to stdout, ignoring a closed pipe (`xdr-relay status | head` must not panic).
fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
