//! `xdr-relay actions`: the response-action journal — `list` what playbooks decided,
//! `approve ID` / `deny ID` what waits in `approve` mode. Works while the daemon runs:
//! a decision is one row changed in one SQLite transaction (only from
//! `awaiting_approval`, so two operators cannot both decide); the daemon sends the action
//! or audits the denial on its next round.

use anyhow::Context;
use relay_state::{ActionRecord, ActionState};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `actions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Path of relay.toml.
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/xdr-relay/relay.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Sub,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// List decisions (default: those awaiting approval; `--all` for every one).
    List {
        /// Every decision, whatever its state.
        #[arg(long)]
        all: bool,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve an action awaiting approval; the daemon sends it.
    Approve {
        /// The action's ID (first column of `actions list`).
        id: i64,
    },
    /// Deny an action awaiting approval; nothing is sent.
    Deny {
        /// The action's ID.
        id: i64,
    },
}

fn json(r: &ActionRecord) -> serde_json::Value {
    let d = &r.decision;
    serde_json::json!({
        "id": r.id,
        "state": d.state.as_str(),
        "playbook": d.key.playbook,
        "tenant": d.key.tenant,
        "alert_id": d.key.alert_id,
        "incident_id": d.incident_id,
        "device_id": d.key.device_id,
        "device_name": d.device_name,
        "action": d.action,
        "option": d.option,
        "mode": d.mode,
        "reason": d.reason,
        "alert_title": d.alert_title,
        "machine_action_id": r.machine_action_id,
        "detail": r.detail,
        "created": r.created.to_rfc3339(),
        "updated": r.updated.to_rfc3339(),
    })
}

/// Runs the subcommand: exit 0, 1 when the action was not awaiting approval, 2 on a bad
/// configuration.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = match super::state::config_with_state(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match args.command {
        Sub::List { all, json: as_json } => {
            let store = super::state::open(&config, super::state::Access::ReadOnly)?;
            let states: &[ActionState] = if all {
                &[]
            } else {
                &[ActionState::AwaitingApproval]
            };
            let rows = store
                .actions_in(states)
                .context("cannot read the action journal")?;
            if as_json {
                for r in &rows {
                    println!("{}", json(r));
                }
            } else {
                println!(
                    "{:>6}  {:<18} {:<20} {:<16} {:<12} {:<24} ALERT",
                    "ID", "STATE", "PLAYBOOK", "TENANT", "ACTION", "DEVICE"
                );
                for r in &rows {
                    let d = &r.decision;
                    println!(
                        "{:>6}  {:<18} {:<20} {:<16} {:<12} {:<24} {} {}",
                        r.id,
                        d.state.as_str(),
                        d.key.playbook,
                        d.key.tenant,
                        format!("{} {}", d.action, d.option),
                        d.device_name.as_deref().unwrap_or(&d.key.device_id),
                        d.key.alert_id,
                        d.alert_title.as_deref().unwrap_or("")
                    );
                }
                if rows.is_empty() {
                    println!(
                        "(no actions{})",
                        if all { "" } else { " awaiting approval" }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Sub::Approve { id } => decide(&config, id, true),
        Sub::Deny { id } => decide(&config, id, false),
    }
}

fn decide(config: &relay_config::Config, id: i64, approve: bool) -> anyhow::Result<ExitCode> {
    let store = super::state::open(config, super::state::Access::Onboard)?;
    let by = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "an operator".to_string());
    match store.decide_action(id, approve, &by) {
        Ok(r) => {
            let d = &r.decision;
            println!(
                "action {id} {}: {} {} on {} (playbook {}, tenant {}, alert {})",
                if approve { "approved" } else { "denied" },
                d.action,
                d.option,
                d.device_name.as_deref().unwrap_or(&d.key.device_id),
                d.key.playbook,
                d.key.tenant,
                d.key.alert_id
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ relay_state::StateError::ActionConflict { .. }) => {
            eprintln!("xdr-relay: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e).context("cannot record the decision"),
    }
}
