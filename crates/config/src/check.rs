//! Small validators shared by every section. Each reports into a [`Ctx`] and returns
//! `None` on failure, so callers check everything before giving up.

use crate::error::{join_key, ConfigProblem};
use crate::raw::RawSecret;
use crate::Secret;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

/// What secret references and relative paths are resolved against.
pub(crate) struct Resolver<'a> {
    /// The directory of `relay.toml`.
    pub config_dir: PathBuf,
    /// The process environment, as passed by the caller.
    pub env: &'a HashMap<String, String>,
    /// systemd's `$CREDENTIALS_DIRECTORY`.
    pub credentials_dir: Option<PathBuf>,
}

impl Resolver<'_> {
    /// `path` relative to the config directory (absolute paths stay as they are).
    pub fn path(&self, path: &str) -> PathBuf {
        self.config_dir.join(path)
    }
}

/// The file being validated and where its problems go.
pub(crate) struct Ctx<'a> {
    /// The file's label, relative to the config directory.
    pub file: String,
    pub problems: &'a mut Vec<ConfigProblem>,
    /// Key paths set from the environment, with the variable that set them; empty for
    /// tenant files, which the environment does not override.
    pub env_keys: &'a BTreeMap<String, String>,
    pub res: &'a Resolver<'a>,
}

impl Ctx<'_> {
    /// Records a problem at `key`, naming the environment variable when one set it.
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let mut message = message.into();
        if let Some(var) = self.env_var_for(key) {
            message.push_str(&format!(" (set by environment variable {var})"));
        }
        self.problems.push(ConfigProblem {
            file: self.file.clone(),
            key: key.to_string(),
            message,
        });
    }

    fn env_var_for(&self, key: &str) -> Option<&str> {
        if key.is_empty() {
            return None;
        }
        self.env_keys
            .iter()
            .find(|(path, _)| {
                path.as_str() == key
                    || path.strip_prefix(key).is_some_and(|r| r.starts_with('.'))
                    || key
                        .strip_prefix(path.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            })
            .map(|(_, var)| var.as_str())
    }

    /// `value`, or a "is required" problem.
    pub fn required<T>(&mut self, key: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.problem(key, "is required");
        }
        value
    }

    /// Rejects a key that does not apply in this context.
    pub fn not_allowed<T>(&mut self, key: &str, value: &Option<T>, why: &str) {
        if value.is_some() {
            self.problem(key, why.to_string());
        }
    }

    /// A non-empty string.
    pub fn non_empty(&mut self, key: &str, value: Option<String>) -> Option<Option<String>> {
        match value {
            Some(v) if v.trim().is_empty() => {
                self.problem(key, "must not be empty");
                None
            }
            other => Some(other),
        }
    }

    /// A lowercase hyphenated GUID.
    pub fn guid(&mut self, key: &str, value: &str) -> Option<String> {
        match uuid::Uuid::try_parse(value.trim()) {
            Ok(id) => Some(id.hyphenated().to_string()),
            Err(_) => {
                self.problem(key, "must be a GUID");
                None
            }
        }
    }

    /// One of a closed set of words.
    pub fn choice<T: Copy>(&mut self, key: &str, value: &str, options: &[(&str, T)]) -> Option<T> {
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == value) {
            return Some(*v);
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("`{n}`")).collect();
        self.problem(
            key,
            format!("must be one of {} (found `{value}`)", names.join(", ")),
        );
        None
    }

    /// An integer in `min..=max`, `default` when unset.
    pub fn int_in(
        &mut self,
        key: &str,
        value: Option<u64>,
        default: u64,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        let v = value.unwrap_or(default);
        if v < min || v > max {
            let message = if max == u64::MAX {
                format!("must be at least {min}")
            } else {
                format!("must be between {min} and {max}")
            };
            self.problem(key, message);
            return None;
        }
        Some(v)
    }

    /// Seconds in `min..=max`, `default` when unset.
    pub fn secs_in(
        &mut self,
        key: &str,
        value: Option<u64>,
        default: u64,
        min: u64,
        max: u64,
    ) -> Option<Duration> {
        self.int_in(key, value, default, min, max)
            .map(Duration::from_secs)
    }

    /// An `http`/`https` URL with a host and without credentials, query or fragment.
    pub fn http_url(&mut self, key: &str, value: &str) -> Option<Url> {
        // The value is not echoed: a URL may carry a password.
        let url = match Url::parse(value.trim()) {
            Ok(url) => url,
            Err(e) => {
                self.problem(key, format!("must be an http(s) URL: {e}"));
                return None;
            }
        };
        let problem = if !matches!(url.scheme(), "http" | "https") {
            Some(format!("must be an http(s) URL, not `{}:`", url.scheme()))
        } else if url.host_str().is_none_or(str::is_empty) {
            Some("must name a host".to_string())
        } else if !url.username().is_empty() || url.password().is_some() {
            Some("must not contain a user name or password".to_string())
        } else if url.query().is_some() || url.fragment().is_some() {
            Some("must not have a query or fragment".to_string())
        } else {
            None
        };
        match problem {
            Some(p) => {
                self.problem(key, p);
                None
            }
            None => Some(url),
        }
    }

    /// A path to an existing, readable regular file; relative to the config directory.
    pub fn readable_file(&mut self, key: &str, value: &str) -> Option<PathBuf> {
        let path = self.res.path(value);
        match std::fs::File::open(&path).and_then(|f| f.metadata()) {
            Ok(meta) if meta.is_file() => Some(path),
            Ok(_) => {
                self.problem(key, format!("{} is not a regular file", path.display()));
                None
            }
            Err(e) => {
                self.problem(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    /// Resolves a secret reference. Problems name the variable or file, never the value.
    pub fn secret(&mut self, key: &str, raw: &RawSecret) -> Option<Secret> {
        let value = match (&raw.env, &raw.file, &raw.credential) {
            (Some(var), None, None) => self.secret_from_env(key, var)?,
            (None, Some(file), None) => {
                let path = self.res.path(file);
                self.secret_from_file(key, &path, "secret file")?
            }
            (None, None, Some(name)) => self.secret_from_credential(key, name)?,
            _ => {
                self.problem(key, "must set exactly one of `env`, `file` or `credential`");
                return None;
            }
        };
        Some(Secret::new(value))
    }

    fn secret_from_env(&mut self, key: &str, var: &str) -> Option<String> {
        if var.is_empty() {
            self.problem(key, "`env` must name an environment variable");
            return None;
        }
        match self.res.env.get(var) {
            Some(v) if !v.is_empty() => Some(v.clone()),
            Some(_) => {
                self.problem(key, format!("environment variable {var} is empty"));
                None
            }
            None => {
                self.problem(key, format!("environment variable {var} is not set"));
                None
            }
        }
    }

    fn secret_from_credential(&mut self, key: &str, name: &str) -> Option<String> {
        // A credential name is a file name inside the directory systemd prepared, never a
        // path that could reach outside it.
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            self.problem(key, "`credential` must be a plain credential name");
            return None;
        }
        let Some(dir) = self.res.credentials_dir.clone() else {
            self.problem(
                key,
                format!(
                    "credential `{name}` needs a systemd credentials directory, but \
                     $CREDENTIALS_DIRECTORY is not set (LoadCredential= in the unit)"
                ),
            );
            return None;
        };
        self.secret_from_file(key, &dir.join(name), "credential")
    }

    fn secret_from_file(&mut self, key: &str, path: &Path, what: &str) -> Option<String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                // Files written with `echo` end in a newline that is not part of the secret.
                let value = text.trim_end_matches(['\n', '\r']);
                if value.is_empty() {
                    self.problem(key, format!("{what} {} is empty", path.display()));
                    None
                } else {
                    Some(value.to_string())
                }
            }
            Err(e) => {
                self.problem(key, format!("cannot read {what} {}: {e}", path.display()));
                None
            }
        }
    }
}

/// Names of tenants and sinks: they become file names, metric labels and state keys.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// What an invalid name is told.
pub(crate) const NAME_RULE: &str = "must be 1–64 characters of a-z, 0-9, `_` and `-`";

/// Splits `host:port` (IPv6 in brackets).
pub(crate) fn host_port(value: &str) -> Result<(String, u16), String> {
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err("must be host:port (the port is required)".to_string());
    };
    let host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner
    } else if host.contains(':') {
        return Err("an IPv6 address must be in brackets, e.g. [::1]:514".to_string());
    } else {
        host
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("must be host:port with a non-empty host".to_string());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host.to_string(), p)),
        _ => Err(format!("port `{port}` must be a number from 1 to 65535")),
    }
}

/// A key path segment, quoted TOML-style when it contains a dot (`librdkafka."sasl.password"`).
pub(crate) fn key_segment(key: &str) -> String {
    if key.contains('.') || key.is_empty() {
        format!("\"{key}\"")
    } else {
        key.to_string()
    }
}

/// `parent.child`, for a child that may need quoting.
pub(crate) fn child_key(parent: &str, child: &str) -> String {
    join_key(parent, &key_segment(child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_words() {
        assert!(is_valid_name("contoso-eu_2"));
        assert!(!is_valid_name("Contoso"));
        assert!(!is_valid_name("con toso"));
        assert!(!is_valid_name("../x"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(&"a".repeat(65)));
    }

    #[test]
    fn host_port_needs_a_port_and_brackets_for_ipv6() {
        assert_eq!(host_port("siem:514"), Ok(("siem".into(), 514)));
        assert_eq!(host_port("[::1]:6514"), Ok(("::1".into(), 6514)));
        assert!(host_port("siem").is_err());
        assert!(host_port("::1:514").is_err());
        assert!(host_port("siem:0").is_err());
        assert!(host_port(":514").is_err());
        assert!(host_port("siem:http").is_err());
    }

    #[test]
    fn dotted_keys_are_quoted() {
        assert_eq!(
            child_key("librdkafka", "sasl.password"),
            "librdkafka.\"sasl.password\""
        );
        assert_eq!(child_key("sinks", "splunk"), "sinks.splunk");
    }
}
