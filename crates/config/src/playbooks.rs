//! `[playbooks.NAME]`: response playbooks — for a matching alert, a Defender for Endpoint
//! machine action (isolate, antivirus scan) on the devices it names. The raw shape, the
//! validated [`PlaybookConfig`], and the validation (regexes compiled here, once, so a bad
//! one is a `check-config` problem and never a runtime surprise).

use crate::check::{child_key, is_valid_name, Ctx, NAME_RULE};
use crate::error::{describe_config_error, join_key};
use crate::load::deserialize_at;
use config::Value;
use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// Alert severity as playbooks compare it (Defender's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// `informational`.
    Informational,
    /// `low`.
    Low,
    /// `medium`.
    Medium,
    /// `high`.
    High,
}

impl Severity {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Informational => "informational",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

const SEVERITIES: [(&str, Severity); 4] = [
    ("informational", Severity::Informational),
    ("low", Severity::Low),
    ("medium", Severity::Medium),
    ("high", Severity::High),
];

/// `isolation_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IsolationType {
    /// `full`: the device talks to Defender only.
    Full,
    /// `selective`: Outlook, Teams and Skype keep working.
    Selective,
}

impl IsolationType {
    /// The API's `IsolationType` value.
    pub fn api_value(self) -> &'static str {
        match self {
            IsolationType::Full => "Full",
            IsolationType::Selective => "Selective",
        }
    }
}

/// `scan_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanType {
    /// `quick`.
    Quick,
    /// `full`.
    Full,
}

impl ScanType {
    /// The API's `ScanType` value.
    pub fn api_value(self) -> &'static str {
        match self {
            ScanType::Quick => "Quick",
            ScanType::Full => "Full",
        }
    }
}

/// `action` with its option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlaybookAction {
    /// `action = "isolate"`.
    Isolate(IsolationType),
    /// `action = "run_av_scan"`.
    RunAvScan(ScanType),
}

impl PlaybookAction {
    /// The config word (`isolate`, `run_av_scan`), also the audit's `action` field.
    pub fn as_str(self) -> &'static str {
        match self {
            PlaybookAction::Isolate(_) => "isolate",
            PlaybookAction::RunAvScan(_) => "run_av_scan",
        }
    }
}

/// `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PlaybookMode {
    /// `dry_run` (the default): nothing is sent; the audit says what would have been.
    #[default]
    DryRun,
    /// `approve`: the action waits for `xdr-relay actions approve ID`.
    Approve,
    /// `enforce`: the action is sent.
    Enforce,
}

impl PlaybookMode {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            PlaybookMode::DryRun => "dry_run",
            PlaybookMode::Approve => "approve",
            PlaybookMode::Enforce => "enforce",
        }
    }
}

const MODES: [(&str, PlaybookMode); 3] = [
    ("dry_run", PlaybookMode::DryRun),
    ("approve", PlaybookMode::Approve),
    ("enforce", PlaybookMode::Enforce),
];

/// `tenants`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSelector {
    /// `["*"]`: every tenant that does not opt out.
    All,
    /// These tenant names.
    Named(Vec<String>),
}

impl TenantSelector {
    /// Whether the selector names `tenant`.
    pub fn includes(&self, tenant: &str) -> bool {
        match self {
            TenantSelector::All => true,
            TenantSelector::Named(names) => names.iter().any(|n| n == tenant),
        }
    }
}

/// A regex from the configuration, compiled once. Compares by its source text.
#[derive(Clone)]
pub struct Pattern(Regex);

impl Pattern {
    /// Compiles `source` (what config loading does for each regex key); the error is the
    /// regex crate's message.
    pub fn new(source: &str) -> Result<Pattern, String> {
        Regex::new(source).map(Pattern).map_err(|e| e.to_string())
    }

    /// Whether the pattern matches somewhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.as_str())
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Pattern {}

/// `[playbooks.NAME.when]`: every condition set must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybookWhen {
    /// `min_severity` (default `high`).
    pub min_severity: Severity,
    /// `title_matches`.
    pub title_matches: Option<Pattern>,
    /// `category_matches`.
    pub category_matches: Option<Pattern>,
    /// `detection_source_matches`.
    pub detection_source_matches: Option<Pattern>,
    /// `service_source_matches`.
    pub service_source_matches: Option<Pattern>,
}

/// `[playbooks.NAME.limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybookLimits {
    /// `per_tenant_per_hour` (default 5): actions per tenant in any hour; beyond it the
    /// decision is audited as `limited` and nothing is sent.
    pub per_tenant_per_hour: u32,
    /// `per_hour` (default 50): actions across all tenants in any hour.
    pub per_hour: u32,
    /// `max_devices_per_incident` (default 3): devices acted on per incident.
    pub max_devices_per_incident: u32,
    /// `never_devices_matching`: device names (DNS names) never acted on.
    pub never_devices_matching: Option<Pattern>,
}

impl Default for PlaybookLimits {
    fn default() -> Self {
        PlaybookLimits {
            per_tenant_per_hour: 5,
            per_hour: 50,
            max_devices_per_incident: 3,
            never_devices_matching: None,
        }
    }
}

/// One validated `[playbooks.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybookConfig {
    /// `NAME`.
    pub name: String,
    /// `action` with `isolation_type` / `scan_type`.
    pub action: PlaybookAction,
    /// `mode`.
    pub mode: PlaybookMode,
    /// `tenants`.
    pub tenants: TenantSelector,
    /// `[when]`.
    pub when: PlaybookWhen,
    /// `[limits]`.
    pub limits: PlaybookLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPlaybook {
    action: Option<String>,
    isolation_type: Option<String>,
    scan_type: Option<String>,
    mode: Option<String>,
    tenants: Option<Vec<String>>,
    when: Option<RawWhen>,
    limits: Option<RawLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWhen {
    min_severity: Option<String>,
    title_matches: Option<String>,
    category_matches: Option<String>,
    detection_source_matches: Option<String>,
    service_source_matches: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    per_tenant_per_hour: Option<u64>,
    per_hour: Option<u64>,
    max_devices_per_incident: Option<u64>,
    never_devices_matching: Option<String>,
}

/// The `playbooks` table of `relay.toml`; `None` when any playbook has a problem.
pub(crate) fn load_playbooks(
    ctx: &mut Ctx<'_>,
    value: Value,
) -> Option<BTreeMap<String, PlaybookConfig>> {
    let table = match value.into_table() {
        Ok(table) => table,
        Err(e) => {
            let (_, message) = describe_config_error(&e, "");
            ctx.problem("playbooks", message);
            return None;
        }
    };
    let mut out = BTreeMap::new();
    let mut all_ok = true;
    for (name, value) in table.into_iter().collect::<BTreeMap<_, _>>() {
        let key = child_key("playbooks", &name);
        let name_ok = is_valid_name(&name);
        if !name_ok {
            ctx.problem(&key, format!("invalid playbook name: {NAME_RULE}"));
        }
        let pb = deserialize_at::<RawPlaybook>(ctx, &key, value)
            .and_then(|raw| playbook(ctx, &key, &name, raw));
        match pb {
            Some(pb) if name_ok => {
                out.insert(name, pb);
            }
            _ => all_ok = false,
        }
    }
    all_ok.then_some(out)
}

fn pattern(ctx: &mut Ctx<'_>, key: &str, value: Option<String>) -> Option<Option<Pattern>> {
    match value {
        None => Some(None),
        Some(s) if s.is_empty() => {
            ctx.problem(key, "must not be empty (leave it out to match everything)");
            None
        }
        Some(s) => match Regex::new(&s) {
            Ok(re) => Some(Some(Pattern(re))),
            Err(e) => {
                // The regex crate's message spans lines with a caret diagram; the last
                // line says what is wrong.
                let text = e.to_string();
                let why = text
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("invalid")
                    .trim()
                    .trim_start_matches("error: ")
                    .to_string();
                ctx.problem(key, format!("not a valid regex: {why}"));
                None
            }
        },
    }
}

fn limit(ctx: &mut Ctx<'_>, key: &str, value: Option<u64>, default: u32) -> Option<u32> {
    ctx.int_in(key, value, u64::from(default), 1, 100_000)
        .and_then(|v| u32::try_from(v).ok())
}

fn playbook(ctx: &mut Ctx<'_>, key: &str, name: &str, raw: RawPlaybook) -> Option<PlaybookConfig> {
    let k = |child: &str| join_key(key, child);
    let action = match raw.action.as_deref() {
        None => {
            ctx.problem(&k("action"), "is required: `isolate` or `run_av_scan`");
            None
        }
        Some("isolate") => {
            if raw.scan_type.is_some() {
                ctx.problem(&k("scan_type"), "applies to `run_av_scan` only");
            }
            let t = match raw.isolation_type.as_deref() {
                None => {
                    ctx.problem(&k("isolation_type"), "is required: `full` or `selective`");
                    None
                }
                Some(v) => ctx.choice(
                    &k("isolation_type"),
                    v,
                    &[
                        ("full", IsolationType::Full),
                        ("selective", IsolationType::Selective),
                    ],
                ),
            };
            t.map(PlaybookAction::Isolate)
        }
        Some("run_av_scan") => {
            if raw.isolation_type.is_some() {
                ctx.problem(&k("isolation_type"), "applies to `isolate` only");
            }
            let t = match raw.scan_type.as_deref() {
                None => {
                    ctx.problem(&k("scan_type"), "is required: `quick` or `full`");
                    None
                }
                Some(v) => ctx.choice(
                    &k("scan_type"),
                    v,
                    &[("quick", ScanType::Quick), ("full", ScanType::Full)],
                ),
            };
            t.map(PlaybookAction::RunAvScan)
        }
        Some(other) => {
            ctx.problem(
                &k("action"),
                format!("must be one of `isolate`, `run_av_scan` (found `{other}`)"),
            );
            None
        }
    };
    let mode = match raw.mode.as_deref() {
        None => Some(PlaybookMode::DryRun),
        Some(m) => ctx.choice(&k("mode"), m, &MODES),
    };
    let tenants = match raw.tenants {
        None => {
            ctx.problem(
                &k("tenants"),
                "is required: tenant names, or [\"*\"] for every tenant",
            );
            None
        }
        Some(list) if list.is_empty() => {
            ctx.problem(&k("tenants"), "must not be empty");
            None
        }
        Some(list) if list.iter().any(|t| t == "*") => {
            if list.len() > 1 {
                ctx.problem(
                    &k("tenants"),
                    "`*` stands alone: it already names every tenant",
                );
                None
            } else {
                Some(TenantSelector::All)
            }
        }
        Some(list) => {
            let mut ok = true;
            for (i, t) in list.iter().enumerate() {
                if !is_valid_name(t) {
                    ctx.problem(&k(&format!("tenants[{i}]")), NAME_RULE);
                    ok = false;
                }
            }
            ok.then_some(TenantSelector::Named(list))
        }
    };
    let when = when(ctx, &k("when"), raw.when.unwrap_or_default());
    let limits = limits(ctx, &k("limits"), raw.limits.unwrap_or_default());
    Some(PlaybookConfig {
        name: name.to_string(),
        action: action?,
        mode: mode?,
        tenants: tenants?,
        when: when?,
        limits: limits?,
    })
}

fn when(ctx: &mut Ctx<'_>, key: &str, raw: RawWhen) -> Option<PlaybookWhen> {
    let k = |child: &str| join_key(key, child);
    let min_severity = match raw.min_severity.as_deref() {
        None => Some(Severity::High),
        Some(s) => ctx.choice(&k("min_severity"), s, &SEVERITIES),
    };
    let title = pattern(ctx, &k("title_matches"), raw.title_matches);
    let category = pattern(ctx, &k("category_matches"), raw.category_matches);
    let detection = pattern(
        ctx,
        &k("detection_source_matches"),
        raw.detection_source_matches,
    );
    let service = pattern(
        ctx,
        &k("service_source_matches"),
        raw.service_source_matches,
    );
    Some(PlaybookWhen {
        min_severity: min_severity?,
        title_matches: title?,
        category_matches: category?,
        detection_source_matches: detection?,
        service_source_matches: service?,
    })
}

fn limits(ctx: &mut Ctx<'_>, key: &str, raw: RawLimits) -> Option<PlaybookLimits> {
    let k = |child: &str| join_key(key, child);
    let d = PlaybookLimits::default();
    let per_tenant = limit(
        ctx,
        &k("per_tenant_per_hour"),
        raw.per_tenant_per_hour,
        d.per_tenant_per_hour,
    );
    let per_hour = limit(ctx, &k("per_hour"), raw.per_hour, d.per_hour);
    let max_devices = limit(
        ctx,
        &k("max_devices_per_incident"),
        raw.max_devices_per_incident,
        d.max_devices_per_incident,
    );
    let never = pattern(
        ctx,
        &k("never_devices_matching"),
        raw.never_devices_matching,
    );
    if let (Some(t), Some(all)) = (per_tenant, per_hour) {
        if t > all {
            ctx.problem(
                &k("per_tenant_per_hour"),
                format!("is above per_hour ({all}): the smaller one always wins"),
            );
            return None;
        }
    }
    Some(PlaybookLimits {
        per_tenant_per_hour: per_tenant?,
        per_hour: per_hour?,
        max_devices_per_incident: max_devices?,
        never_devices_matching: never?,
    })
}

/// Each tenant a playbook names must exist: checked once every tenant file is read.
pub(crate) fn check_tenant_names(
    ctx: &mut Ctx<'_>,
    playbooks: &BTreeMap<String, PlaybookConfig>,
    tenants: &[crate::model::TenantConfig],
) {
    for pb in playbooks.values() {
        if let TenantSelector::Named(names) = &pb.tenants {
            for (i, n) in names.iter().enumerate() {
                if !tenants.iter().any(|t| &t.name == n) {
                    ctx.problem(
                        &format!("{}.tenants[{i}]", child_key("playbooks", &pb.name)),
                        format!("no tenant `{n}` is configured"),
                    );
                }
            }
        }
    }
}
