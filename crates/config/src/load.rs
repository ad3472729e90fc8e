//! Reading the files: `relay.toml` merged with `XDR_RELAY__*` environment overrides,
//! then every `tenants.d/*.toml`, each parsed with the `config` crate and handed to
//! validation section by section.

use crate::check::{is_valid_name, Ctx, Resolver, NAME_RULE};
use crate::error::{describe_config_error, join_key, ConfigErrors, ConfigProblem};
use crate::model::{
    AdminConfig, Config, HttpConfig, OutboxConfig, SinkConfig, SinkKind, StateConfig,
    TenantDefaults,
};
use crate::validate;
use config::{Map, Value, ValueKind};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Prefix of the environment variables that override `relay.toml` keys.
pub const ENV_PREFIX: &str = "XDR_RELAY";
/// Separator between the prefix and each key level: `XDR_RELAY__STATE__PATH` sets
/// `[state] path`, `XDR_RELAY__SINKS__SPLUNK__URL` sets `[sinks.splunk] url`.
pub const ENV_SEPARATOR: &str = "__";
/// The tenant directory used when neither the caller nor `relay.toml` names one,
/// relative to the directory of `relay.toml`.
pub const DEFAULT_TENANTS_DIR: &str = "tenants.d";

/// What [`load`] reads. The caller supplies the environment: no library crate reads the
/// process environment itself (the binary passes `std::env::vars()`).
///
/// `Debug` shows how many environment variables there are, not their values: the
/// environment holds secrets.
#[derive(Clone)]
pub struct LoadOptions<'a> {
    /// `relay.toml`. Its directory is the config directory: relative paths in every file,
    /// and the default tenant directory, are resolved against it.
    pub config_path: PathBuf,
    /// Overrides `tenants_dir` of `relay.toml` (default `<config dir>/tenants.d`). A
    /// relative path is relative to the config directory, like every path in the files.
    pub tenants_dir: Option<PathBuf>,
    /// The environment: `XDR_RELAY__*` overrides and `{ env = "NAME" }` secrets are looked
    /// up here, and `CREDENTIALS_DIRECTORY` when `credentials_dir` is unset.
    pub env: &'a HashMap<String, String>,
    /// systemd's credentials directory for `{ credential = "name" }` secrets.
    pub credentials_dir: Option<PathBuf>,
}

impl<'a> LoadOptions<'a> {
    /// Options for `config_path` with `env`, no other overrides.
    pub fn new(config_path: impl Into<PathBuf>, env: &'a HashMap<String, String>) -> Self {
        LoadOptions {
            config_path: config_path.into(),
            tenants_dir: None,
            env,
            credentials_dir: None,
        }
    }
}

impl std::fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("config_path", &self.config_path)
            .field("tenants_dir", &self.tenants_dir)
            .field("env", &format_args!("<{} variables>", self.env.len()))
            .field("credentials_dir", &self.credentials_dir)
            .finish()
    }
}

/// Loads and validates the whole configuration. On failure every problem found is
/// returned, each naming its file and key.
pub fn load(opts: &LoadOptions<'_>) -> Result<Config, ConfigErrors> {
    let config_file = opts.config_path.clone();
    let config_dir = match config_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let resolver = Resolver {
        config_dir: config_dir.clone(),
        env: opts.env,
        credentials_dir: opts
            .credentials_dir
            .clone()
            .or_else(|| opts.env.get("CREDENTIALS_DIRECTORY").map(PathBuf::from)),
    };
    let mut problems = Vec::new();
    let env_overrides = env_overrides(opts.env);
    let env_keys: BTreeMap<String, String> = env_overrides
        .iter()
        .map(|(path, (var, _))| (path.clone(), var.clone()))
        .collect();

    let relay = {
        let mut ctx = Ctx {
            file: label(&config_dir, &config_file),
            problems: &mut problems,
            env_keys: &env_keys,
            res: &resolver,
        };
        match std::fs::read_to_string(&config_file) {
            Ok(text) => load_relay(&mut ctx, &text, &env_overrides),
            Err(e) => {
                ctx.problem("", format!("cannot read {}: {e}", config_file.display()));
                RelayParts::default()
            }
        }
    };

    let (tenants_dir, dir_is_explicit) = match (&opts.tenants_dir, &relay.tenants_dir) {
        (Some(dir), _) => (config_dir.join(dir), true),
        (None, Some(dir)) => (config_dir.join(dir), true),
        (None, None) => (config_dir.join(DEFAULT_TENANTS_DIR), false),
    };
    // Tenant files are checked against sinks and defaults only when relay.toml could be
    // read; otherwise every tenant would repeat relay.toml's problem.
    let sink_kinds = relay
        .sink_kinds
        .clone()
        .filter(|_| relay.defaults.is_some());
    let defaults = relay.defaults.clone().unwrap_or_default();
    let mut tenants = Vec::new();
    let mut seen = validate::Seen::default();
    for path in tenant_files(&config_dir, &tenants_dir, dir_is_explicit, &mut problems) {
        let mut ctx = Ctx {
            file: label(&config_dir, &path),
            problems: &mut problems,
            env_keys: &BTreeMap::new(),
            res: &resolver,
        };
        if let Some(tenant) =
            load_tenant(&mut ctx, &path, &defaults, sink_kinds.as_ref(), &mut seen)
        {
            tenants.push(tenant);
        }
    }

    if let Some(playbooks) = &relay.playbooks {
        let mut ctx = Ctx {
            file: label(&config_dir, &config_file),
            problems: &mut problems,
            env_keys: &env_keys,
            res: &resolver,
        };
        crate::playbooks::check_tenant_names(&mut ctx, playbooks, &tenants);
    }

    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    match relay {
        RelayParts {
            state: Some(state),
            defaults: Some(defaults),
            http: Some(http),
            admin: Some(admin),
            outbox: Some(outbox),
            sinks: Some(sinks),
            playbooks: Some(playbooks),
            ..
        } => Ok(Config {
            config_file,
            config_dir,
            tenants_dir,
            state,
            defaults,
            http,
            admin,
            outbox,
            sinks,
            playbooks,
            tenants,
        }),
        // Every `None` above comes with a recorded problem; this arm is a safety net.
        _ => Err(ConfigErrors(vec![ConfigProblem {
            file: label(&config_dir, &config_file),
            key: String::new(),
            message: "incomplete configuration".to_string(),
        }])),
    }
}

/// The `XDR_RELAY__*` variables: key path (as `config` will set it) → (variable, value).
fn env_overrides(env: &HashMap<String, String>) -> BTreeMap<String, (String, String)> {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}").to_lowercase();
    env.iter()
        .filter(|(_, value)| !value.is_empty())
        .filter_map(|(var, value)| {
            let lower = var.to_lowercase();
            let rest = lower.strip_prefix(&prefix)?;
            (!rest.is_empty()).then(|| {
                (
                    rest.replace(ENV_SEPARATOR, "."),
                    (var.clone(), value.clone()),
                )
            })
        })
        .collect()
}

/// A file's name as problems show it: relative to the config directory when inside it.
pub(crate) fn label(config_dir: &Path, path: &Path) -> String {
    match path.strip_prefix(config_dir) {
        Ok(relative) if !relative.as_os_str().is_empty() => relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
        _ => path.display().to_string(),
    }
}

/// What came out of `relay.toml`; `None` where a section had problems.
#[derive(Default)]
struct RelayParts {
    state: Option<StateConfig>,
    defaults: Option<TenantDefaults>,
    http: Option<HttpConfig>,
    admin: Option<AdminConfig>,
    outbox: Option<OutboxConfig>,
    sinks: Option<BTreeMap<String, SinkConfig>>,
    playbooks: Option<BTreeMap<String, crate::playbooks::PlaybookConfig>>,
    /// Every declared sink name with its `type` when known, valid or not, so tenants
    /// naming a broken sink are not also told it does not exist.
    sink_kinds: Option<BTreeMap<String, Option<SinkKind>>>,
    tenants_dir: Option<String>,
}

const RELAY_SECTIONS: [&str; 8] = [
    "state",
    "defaults",
    "http",
    "admin",
    "outbox",
    "sinks",
    "playbooks",
    "tenants_dir",
];

fn load_relay(
    ctx: &mut Ctx<'_>,
    text: &str,
    env_overrides: &BTreeMap<String, (String, String)>,
) -> RelayParts {
    let env_source: Map<String, String> = env_overrides
        .values()
        .map(|(var, value)| (var.clone(), value.clone()))
        .collect();
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .separator(ENV_SEPARATOR)
                .ignore_empty(true)
                .source(Some(env_source)),
        )
        .build()
        .and_then(|c| c.try_deserialize::<Map<String, Value>>());
    let mut table = match built {
        Ok(table) => table,
        Err(e) => {
            let (key, message) = describe_config_error(&e, text);
            ctx.problem(&key, message);
            return RelayParts::default();
        }
    };

    let mut unknown: Vec<String> = table
        .keys()
        .filter(|k| !RELAY_SECTIONS.contains(&k.as_str()))
        .cloned()
        .collect();
    unknown.sort();
    for key in unknown {
        let expected: Vec<String> = RELAY_SECTIONS.iter().map(|s| format!("`{s}`")).collect();
        ctx.problem(
            &key,
            format!("unknown key; expected one of {}", expected.join(", ")),
        );
    }

    let tenants_dir = match table.remove("tenants_dir") {
        None => None,
        Some(v) => match v.into_string() {
            Ok(s) if !s.trim().is_empty() => Some(s),
            Ok(_) => {
                ctx.problem("tenants_dir", "must not be empty");
                None
            }
            Err(e) => {
                let (_, message) = describe_config_error(&e, "");
                ctx.problem("tenants_dir", message);
                None
            }
        },
    };

    let state = section(ctx, &mut table, "state").and_then(|raw| validate::state(ctx, raw));
    let defaults =
        section(ctx, &mut table, "defaults").and_then(|raw| validate::defaults(ctx, raw));
    let http = section(ctx, &mut table, "http").and_then(|raw| validate::http(ctx, raw));
    let admin = section(ctx, &mut table, "admin").and_then(|raw| validate::admin(ctx, raw));
    let outbox = section(ctx, &mut table, "outbox").and_then(|raw| validate::outbox(ctx, raw));
    let (sinks, sink_kinds) = match table.remove("sinks") {
        None => (Some(BTreeMap::new()), Some(BTreeMap::new())),
        Some(value) => load_sinks(ctx, value),
    };
    let playbooks = match table.remove("playbooks") {
        None => Some(BTreeMap::new()),
        Some(value) => crate::playbooks::load_playbooks(ctx, value),
    };

    if let (Some(defaults), Some(kinds)) = (&defaults, &sink_kinds) {
        for (i, name) in defaults.sinks.iter().enumerate() {
            if !kinds.contains_key(name) {
                ctx.problem(
                    &format!("defaults.sinks[{i}]"),
                    undefined_sink_message(name, kinds),
                );
            }
        }
    }

    RelayParts {
        state,
        defaults,
        http,
        admin,
        outbox,
        sinks,
        playbooks,
        sink_kinds,
        tenants_dir,
    }
}

/// `no sink `x` is defined in relay.toml (defined: a, b)`.
pub(crate) fn undefined_sink_message(
    name: &str,
    kinds: &BTreeMap<String, Option<SinkKind>>,
) -> String {
    if kinds.is_empty() {
        format!("no sink `{name}` is defined in relay.toml (it defines none)")
    } else {
        let defined: Vec<&str> = kinds.keys().map(String::as_str).collect();
        format!(
            "no sink `{name}` is defined in relay.toml (defined: {})",
            defined.join(", ")
        )
    }
}

type SinkMaps = (
    Option<BTreeMap<String, SinkConfig>>,
    Option<BTreeMap<String, Option<SinkKind>>>,
);

fn load_sinks(ctx: &mut Ctx<'_>, value: Value) -> SinkMaps {
    let table = match value.into_table() {
        Ok(table) => table,
        Err(e) => {
            let (_, message) = describe_config_error(&e, "");
            ctx.problem("sinks", message);
            return (None, None);
        }
    };
    let mut sinks = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    let mut all_ok = true;
    for (name, value) in table.into_iter().collect::<BTreeMap<_, _>>() {
        let key = crate::check::child_key("sinks", &name);
        let (kind, sink) = load_sink(ctx, &key, &name, value);
        kinds.insert(name.clone(), kind);
        match sink {
            Some(sink) => {
                sinks.insert(name, sink);
            }
            None => all_ok = false,
        }
    }
    (all_ok.then_some(sinks), Some(kinds))
}

fn load_sink(
    ctx: &mut Ctx<'_>,
    key: &str,
    name: &str,
    value: Value,
) -> (Option<SinkKind>, Option<SinkConfig>) {
    let name_ok = is_valid_name(name);
    if !name_ok {
        ctx.problem(key, format!("invalid sink name: {NAME_RULE}"));
    }
    let mut table = match value.into_table() {
        Ok(table) => table,
        Err(e) => {
            let (_, message) = describe_config_error(&e, "");
            ctx.problem(key, message);
            return (None, None);
        }
    };
    let type_key = join_key(key, "type");
    let kind = match table.remove("type").map(Value::into_string) {
        None => {
            ctx.problem(
                &type_key,
                "is required: one of `file`, `splunk_hec`, `syslog`, `kafka`",
            );
            None
        }
        Some(Err(e)) => {
            let (_, message) = describe_config_error(&e, "");
            ctx.problem(&type_key, message);
            None
        }
        Some(Ok(t)) => ctx.choice(&type_key, &t, &SinkKind::ALL),
    };
    let Some(kind) = kind else {
        return (None, None);
    };
    let rest = Value::new(None, ValueKind::Table(table));
    let sink = match kind {
        SinkKind::File => {
            deserialize_at(ctx, key, rest).and_then(|raw| validate::file_sink(ctx, key, raw))
        }
        SinkKind::SplunkHec => {
            deserialize_at(ctx, key, rest).and_then(|raw| validate::hec_sink(ctx, key, raw))
        }
        SinkKind::Syslog => {
            deserialize_at(ctx, key, rest).and_then(|raw| validate::syslog_sink(ctx, key, raw))
        }
        SinkKind::Kafka => {
            deserialize_at(ctx, key, rest).and_then(|raw| validate::kafka_sink(ctx, key, raw))
        }
    };
    (Some(kind), sink.filter(|_| name_ok))
}

/// Takes `name` out of `table` and deserializes it; an absent section is all defaults.
fn section<T: DeserializeOwned + Default>(
    ctx: &mut Ctx<'_>,
    table: &mut Map<String, Value>,
    name: &str,
) -> Option<T> {
    match table.remove(name) {
        None => Some(T::default()),
        Some(value) => deserialize_at(ctx, name, value),
    }
}

/// Deserializes `value`, reporting a failure at `key` plus the path inside the value.
pub(crate) fn deserialize_at<T: DeserializeOwned>(
    ctx: &mut Ctx<'_>,
    key: &str,
    value: Value,
) -> Option<T> {
    match value.try_deserialize::<T>() {
        Ok(v) => Some(v),
        Err(e) => {
            let (inner, message) = describe_config_error(&e, "");
            ctx.problem(&join_key(key, &inner), message);
            None
        }
    }
}

/// The `*.toml` files of the tenant directory, sorted by name. Hidden files are skipped
/// (editors' swap files), and so is anything else, such as `contoso.toml.example`.
fn tenant_files(
    config_dir: &Path,
    dir: &Path,
    explicit: bool,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // A fresh install has no tenants yet; only a directory someone named must exist.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Vec::new(),
        Err(e) => {
            problems.push(ConfigProblem {
                file: label(config_dir, dir),
                key: String::new(),
                message: format!("cannot read tenant directory {}: {e}", dir.display()),
            });
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.ends_with(".toml") && !n.starts_with('.')) && path.is_file()
        })
        .collect();
    files.sort();
    files
}

fn load_tenant(
    ctx: &mut Ctx<'_>,
    path: &Path,
    defaults: &TenantDefaults,
    sinks: Option<&BTreeMap<String, Option<SinkKind>>>,
    seen: &mut validate::Seen,
) -> Option<crate::model::TenantConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            ctx.problem("", format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    let table = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<Map<String, Value>>());
    let table = match table {
        Ok(table) => table,
        Err(e) => {
            let (key, message) = describe_config_error(&e, &text);
            ctx.problem(&key, message);
            return None;
        }
    };
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".toml").to_string())
        .unwrap_or_default();
    validate::tenant(ctx, &stem, path, table, defaults, sinks, seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_relative_inside_the_config_dir_and_full_outside() {
        let dir = Path::new("/etc/xdr-relay");
        assert_eq!(
            label(dir, &dir.join("tenants.d/a.toml")),
            "tenants.d/a.toml"
        );
        assert_eq!(
            label(dir, Path::new("/srv/tenants/a.toml")),
            "/srv/tenants/a.toml"
        );
        assert_eq!(label(Path::new("."), Path::new("relay.toml")), "relay.toml");
        assert_eq!(
            label(Path::new("."), Path::new("./tenants.d/a.toml")),
            "tenants.d/a.toml"
        );
    }

    #[test]
    fn debug_of_options_does_not_print_the_environment() {
        let env: HashMap<String, String> =
            [("HEC_TOKEN".to_string(), "hunter2".to_string())].into();
        let debug = format!("{:?}", LoadOptions::new("relay.toml", &env));
        assert!(
            !debug.contains("hunter2") && !debug.contains("HEC_TOKEN"),
            "{debug}"
        );
        assert!(debug.contains("<1 variables>"), "{debug}");
    }

    #[test]
    fn env_overrides_are_prefixed_double_underscore_variables() {
        let env: HashMap<String, String> = [
            ("XDR_RELAY__SINKS__SPLUNK__URL", "https://x"),
            ("xdr_relay__admin__listen", "127.0.0.1:1"),
            ("XDR_RELAY_LOG", "debug"),
            ("XDR_RELAY__", "x"),
            ("XDR_RELAY__HTTP__USER_AGENT", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let keys: Vec<String> = env_overrides(&env).into_keys().collect();
        assert_eq!(keys, vec!["admin.listen", "sinks.splunk.url"]);
    }
}
