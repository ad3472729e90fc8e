//! The tenant file onboarding writes: rendered as text (so it keeps comments and the
//! order an operator expects), written atomically, and taken back when the configuration
//! it completes does not validate or does not work.

use relay_config::{Api, Stream};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// What goes into `tenants.d/<name>.toml`. Keys left `None` are not written, so the
/// tenant follows `[defaults]` for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantFile {
    /// Comment lines at the top (without `# `).
    pub comment: Vec<String>,
    /// `name`.
    pub name: String,
    /// `tenant_id`.
    pub tenant_id: String,
    /// `api`.
    pub api: Option<Api>,
    /// `streams`.
    pub streams: Option<Vec<Stream>>,
    /// `sinks`.
    pub sinks: Option<Vec<String>>,
    /// `cloud`.
    pub cloud: Option<CloudEntry>,
    /// `[auth] client_id`.
    pub client_id: String,
    /// `[auth] kind` and its credential references.
    pub auth: AuthEntry,
}

/// `cloud = "gcc"` or a `[cloud]` table with one base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudEntry {
    /// A named cloud.
    Named(&'static str),
    /// `[cloud] base = "..."`: Entra and every API on one host (the simulator).
    Base(String),
}

/// `[auth]` minus `client_id`. Never a secret value: only references to where the
/// operator keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthEntry {
    /// `kind = "refresh_token"`: the token itself lives in the state store.
    RefreshToken {
        /// A confidential (web) app's secret.
        client_secret: Option<SecretRef>,
    },
    /// `kind = "client_secret"`.
    ClientSecret {
        /// The app's secret.
        client_secret: SecretRef,
    },
    /// `kind = "certificate"`.
    Certificate {
        /// `certificate_file`.
        certificate_file: String,
        /// `private_key`.
        private_key: SecretRef,
    },
}

/// `{ file = "..." }` or `{ env = "..." }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// A file holding the secret.
    File(String),
    /// An environment variable of the daemon holding it.
    Env(String),
}

/// A TOML basic string, quoted and escaped.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list<T: AsRef<str>>(items: &[T]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s.as_ref())).collect();
    format!("[{}]", quoted.join(", "))
}

impl SecretRef {
    fn render(&self) -> String {
        match self {
            SecretRef::File(path) => format!("{{ file = {} }}", q(path)),
            SecretRef::Env(var) => format!("{{ env = {} }}", q(var)),
        }
    }
}

impl TenantFile {
    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.comment {
            let _ = writeln!(out, "# {line}");
        }
        let _ = writeln!(out, "name = {}", q(&self.name));
        let _ = writeln!(out, "tenant_id = {}", q(&self.tenant_id));
        if let Some(api) = self.api {
            let api = match api {
                Api::Graph => "graph",
                Api::Defender => "defender",
            };
            let _ = writeln!(out, "api = {}", q(api));
        }
        if let Some(streams) = &self.streams {
            let names: Vec<&str> = streams.iter().map(|s| s.as_str()).collect();
            let _ = writeln!(out, "streams = {}", list(&names));
        }
        if let Some(sinks) = &self.sinks {
            let _ = writeln!(out, "sinks = {}", list(sinks));
        }
        match &self.cloud {
            Some(CloudEntry::Named(name)) => {
                let _ = writeln!(out, "cloud = {}", q(name));
            }
            Some(CloudEntry::Base(base)) => {
                let _ = writeln!(out, "\n[cloud]\nbase = {}", q(base));
            }
            None => {}
        }
        let _ = writeln!(out, "\n[auth]");
        let kind = match &self.auth {
            AuthEntry::RefreshToken { .. } => "refresh_token",
            AuthEntry::ClientSecret { .. } => "client_secret",
            AuthEntry::Certificate { .. } => "certificate",
        };
        let _ = writeln!(out, "kind = {}", q(kind));
        let _ = writeln!(out, "client_id = {}", q(&self.client_id));
        match &self.auth {
            AuthEntry::RefreshToken {
                client_secret: None,
            } => {}
            AuthEntry::RefreshToken {
                client_secret: Some(secret),
            }
            | AuthEntry::ClientSecret {
                client_secret: secret,
            } => {
                let _ = writeln!(out, "client_secret = {}", secret.render());
            }
            AuthEntry::Certificate {
                certificate_file,
                private_key,
            } => {
                let _ = writeln!(out, "certificate_file = {}", q(certificate_file));
                let _ = writeln!(out, "private_key = {}", private_key.render());
            }
        }
        out
    }
}

/// How a path the operator gave is written into a tenant file: relative to the
/// configuration directory when inside it (tenant files resolve relative paths against
/// that directory, not against the operator's working directory), absolute otherwise.
pub fn config_path(path: &Path, config_dir: &Path) -> io::Result<String> {
    let absolute = std::path::absolute(path)?;
    let dir = std::path::absolute(config_dir)?;
    let shown = match absolute.strip_prefix(&dir) {
        Ok(relative) if !relative.as_os_str().is_empty() => relative.to_path_buf(),
        _ => absolute,
    };
    shown.into_os_string().into_string().map_err(|p| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not valid UTF-8", PathBuf::from(p).display()),
        )
    })
}

/// A tenant file that was just written, with what it replaced, so it can be taken back.
#[derive(Debug)]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    previous: Option<String>,
}

impl Written {
    /// Whether the file replaced an existing one (`--force`).
    pub fn replaced(&self) -> bool {
        self.previous.is_some()
    }

    /// Restores the replaced file, or removes the new one.
    pub fn roll_back(self) -> io::Result<()> {
        match &self.previous {
            Some(text) => replace(&self.path, text),
            None => std::fs::remove_file(&self.path),
        }
    }
}

/// Writes `text` as `dir/<name>.toml`, creating `dir` if needed. The text goes to a hidden
/// temporary file first and is renamed into place, so a daemon watching the directory
/// never reads half a file (the loader skips hidden files).
pub fn write(dir: &Path, name: &str, text: &str) -> io::Result<Written> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.toml"));
    let previous = match std::fs::read_to_string(&path) {
        Ok(old) => Some(old),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    replace(&path, text)?;
    Ok(Written { path, previous })
}

fn replace(path: &Path, text: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.onboard-tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> TenantFile {
        TenantFile {
            comment: vec!["written by xdr-relay onboard".into()],
            name: "contoso".into(),
            tenant_id: "00000000-0000-0000-0000-000000000001".into(),
            api: None,
            streams: None,
            sinks: None,
            cloud: None,
            client_id: "00000000-0000-0000-0000-0000000000aa".into(),
            auth: AuthEntry::RefreshToken {
                client_secret: None,
            },
        }
    }

    #[test]
    fn refresh_token_file_names_no_token() {
        assert_eq!(
            base().render(),
            "# written by xdr-relay onboard\n\
             name = \"contoso\"\n\
             tenant_id = \"00000000-0000-0000-0000-000000000001\"\n\
             \n[auth]\n\
             kind = \"refresh_token\"\n\
             client_id = \"00000000-0000-0000-0000-0000000000aa\"\n"
        );
    }

    #[test]
    fn every_key_and_reference_kind_renders_as_valid_toml() {
        let mut f = base();
        f.api = Some(Api::Defender);
        f.streams = Some(vec![Stream::Incidents, Stream::Alerts]);
        f.sinks = Some(vec!["splunk".into(), "arc-sight".into()]);
        f.cloud = Some(CloudEntry::Base("http://127.0.0.1:8400/".into()));
        f.auth = AuthEntry::ClientSecret {
            client_secret: SecretRef::File("C:\\secrets\\\"app\".txt".into()),
        };
        let text = f.render();
        assert!(
            text.contains("api = \"defender\"\nstreams = [\"incidents\", \"alerts\"]\nsinks = [\"splunk\", \"arc-sight\"]\n\n[cloud]\nbase = \"http://127.0.0.1:8400/\"\n\n[auth]\nkind = \"client_secret\""),
            "{text}"
        );
        let parsed: toml::Table = text.parse().unwrap();
        assert_eq!(
            parsed["auth"]["client_secret"]["file"].as_str(),
            Some("C:\\secrets\\\"app\".txt")
        );
        assert!(parsed["auth"].get("refresh_token").is_none());

        f.cloud = Some(CloudEntry::Named("gcc_high"));
        f.auth = AuthEntry::Certificate {
            certificate_file: "certs/app.pem".into(),
            private_key: SecretRef::Env("APP_KEY".into()),
        };
        let parsed: toml::Table = f.render().parse().unwrap();
        assert_eq!(parsed["cloud"].as_str(), Some("gcc_high"));
        assert_eq!(parsed["auth"]["kind"].as_str(), Some("certificate"));
        assert_eq!(
            parsed["auth"]["certificate_file"].as_str(),
            Some("certs/app.pem")
        );
        assert_eq!(
            parsed["auth"]["private_key"]["env"].as_str(),
            Some("APP_KEY")
        );
    }

    #[test]
    fn paths_inside_the_config_dir_are_written_relative() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("secrets/app");
        assert_eq!(config_path(&inside, dir.path()).unwrap(), "secrets/app");
        let outside = Path::new("/srv/elsewhere/app");
        assert_eq!(
            config_path(outside, dir.path()).unwrap(),
            "/srv/elsewhere/app"
        );
    }

    #[test]
    fn writing_replaces_atomically_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let tenants = dir.path().join("tenants.d");
        let w = write(&tenants, "contoso", "name = \"contoso\"\n").unwrap();
        assert!(!w.replaced());
        assert_eq!(
            std::fs::read_to_string(tenants.join("contoso.toml")).unwrap(),
            "name = \"contoso\"\n"
        );
        w.roll_back().unwrap();
        assert!(!tenants.join("contoso.toml").exists());

        std::fs::write(tenants.join("contoso.toml"), "old").unwrap();
        let w = write(&tenants, "contoso", "new").unwrap();
        assert!(w.replaced());
        assert_eq!(
            std::fs::read_to_string(tenants.join("contoso.toml")).unwrap(),
            "new"
        );
        w.roll_back().unwrap();
        assert_eq!(
            std::fs::read_to_string(tenants.join("contoso.toml")).unwrap(),
            "old"
        );
        let left: Vec<_> = std::fs::read_dir(&tenants).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
    }
}
