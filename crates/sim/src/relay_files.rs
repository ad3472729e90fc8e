//! Configuration files for an xdr-relay that reads from this simulator: `relay.toml`
//! plus one `tenants.d/<name>.toml` per simulated tenant, with each tenant's refresh
//! token in `secrets/<name>.rt`. Used by `xdr-relay demo`, the end-to-end tests and the
//! load run, so all three configure the relay the same way an operator would.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::Sim;

/// What the generated configuration says.
#[derive(Debug, Clone)]
pub struct RelayFiles {
    /// `[defaults] poll_interval_secs` (the relay's floor is 10).
    pub poll_interval_secs: u64,
    /// `[defaults] overlap_secs`: must cover the simulator's late visibility.
    pub overlap_secs: u64,
    /// `[defaults] availability_lag_secs`.
    pub availability_lag_secs: u64,
    /// `[defaults] first_fetch_hours`.
    pub first_fetch_hours: u64,
    /// The `[sinks.*]` tables, verbatim TOML.
    pub sinks_toml: String,
    /// The sinks every tenant routes to.
    pub tenant_sinks: Vec<String>,
    /// Extra verbatim TOML appended to relay.toml (e.g. `[outbox]`).
    pub extra_toml: String,
    /// How tenants authenticate.
    pub auth: FilesAuth,
    /// The API family every tenant is read through; `None` alternates (see [`api_of`]).
    pub api: Option<&'static str>,
}

/// The credential written into generated tenant files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FilesAuth {
    /// A refresh token from the consent flow (`secrets/NAME.rt`).
    #[default]
    RefreshToken,
    /// The app's client secret (`secrets/NAME.secret`): client credentials.
    ClientSecret,
}

impl Default for RelayFiles {
    fn default() -> Self {
        RelayFiles {
            poll_interval_secs: 10,
            overlap_secs: 120,
            availability_lag_secs: 0,
            first_fetch_hours: 2,
            sinks_toml: "[sinks.file]\ntype = \"file\"\npath = \"events\"\n".to_string(),
            tenant_sinks: vec!["file".to_string()],
            extra_toml: String::new(),
            auth: FilesAuth::RefreshToken,
            api: None,
        }
    }
}

/// The API family tenant `index` is read through in generated configurations: even
/// tenants use Graph, odd ones the Defender product APIs, so both are always exercised.
pub fn api_of(index: usize) -> &'static str {
    if index % 2 == 0 {
        "graph"
    } else {
        "defender"
    }
}

impl Sim {
    /// Writes `relay.toml`, `tenants.d/*.toml` and `secrets/*.rt` for this simulator's
    /// tenants into `dir` (created if missing) and returns the path of `relay.toml`.
    /// Tenant files already in `tenants.d/` are removed first.
    pub fn write_relay_config(&self, dir: &Path, files: &RelayFiles) -> io::Result<PathBuf> {
        let tenants_dir = dir.join("tenants.d");
        let secrets = dir.join("secrets");
        fs::create_dir_all(&tenants_dir)?;
        fs::create_dir_all(&secrets)?;
        for old in fs::read_dir(&tenants_dir)?.flatten() {
            if old.path().extension().is_some_and(|x| x == "toml") {
                fs::remove_file(old.path())?;
            }
        }
        let relay = dir.join("relay.toml");
        fs::write(
            &relay,
            format!(
                "# Written for the xdr-relay simulator at {base}\n\
                 [state]\npath = \"state.db\"\nkey_file = \"state.key\"\n\n\
                 [defaults]\npoll_interval_secs = {poll}\noverlap_secs = {overlap}\n\
                 availability_lag_secs = {lag}\nfirst_fetch_hours = {first}\n\n{sinks}\n{extra}",
                base = self.base_url(),
                poll = files.poll_interval_secs,
                overlap = files.overlap_secs,
                lag = files.availability_lag_secs,
                first = files.first_fetch_hours,
                sinks = files.sinks_toml,
                extra = files.extra_toml,
            ),
        )?;
        let sinks = files
            .tenant_sinks
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        for (i, t) in self.tenants().iter().enumerate() {
            let (kind, key, file) = match files.auth {
                FilesAuth::RefreshToken => {
                    let file = format!("{}.rt", t.name);
                    fs::write(secrets.join(&file), &t.refresh_token)?;
                    ("refresh_token", "refresh_token", file)
                }
                FilesAuth::ClientSecret => {
                    let file = format!("{}.secret", t.name);
                    fs::write(secrets.join(&file), &t.client_secret)?;
                    ("client_secret", "client_secret", file)
                }
            };
            let mut toml = String::new();
            let _ = write!(
                toml,
                "name = \"{name}\"\ntenant_id = \"{tid}\"\nstreams = [\"incidents\", \"alerts\"]\n\
                 sinks = [{sinks}]\napi = \"{api}\"\n\n[cloud]\nbase = \"{base}\"\n\n\
                 [auth]\nkind = \"{kind}\"\nclient_id = \"{cid}\"\n\
                 {key} = {{ file = \"secrets/{file}\" }}\n",
                name = t.name,
                tid = t.tenant_id,
                api = files.api.unwrap_or_else(|| api_of(i)),
                base = self.base_url(),
                cid = t.client_id,
            );
            fs::write(tenants_dir.join(format!("{}.toml", t.name)), toml)?;
        }
        Ok(relay)
    }
}
