//! CEF tests: literal lines from the real samples, the standard's escaping vectors, and
//! properties checked against a reference decoder written from the standard.

use super::*;
use crate::event::testdata::*;
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::Value;

fn line(page: &str, i: usize, feed: Feed) -> String {
    to_line(&event(page, i, feed), &CefOptions::default())
}

#[test]
fn graph_alert_sample_maps_to_the_expected_line() {
    assert_eq!(
        line(GRAPH_ALERTS, 0, Feed::GraphAlerts),
        concat!(
            r"CEF:0|Microsoft|Microsoft Defender XDR|2.0|7f1c3609-a3ff-40e2-995b-c01770161d68|Suspicious PowerShell command line|5|",
            r"rt=1697795589883 start=1697795499515 end=1697795501993 externalId=daefa1828b-dd4e-405c-8a3b-aa28596830dd_1 ",
            r"cat=Execution sourceServiceName=microsoftDefenderForEndpoint shost=clw555test suser=CDPUserIS-38411 sntdom=AzureAD ",
            r"suid=AzureAD\\CDPUserIS-38411 src=127.0.0.1 request=http://127.0.0.1/1.exe fname=powershell.exe ",
            r"filePath=C:\\Windows\\System32\\WindowsPowerShell\\v1.0 fileHash=a72c41316307889e43fe8605a0dca4a72e72a011 ",
            r"cs2Label=IncidentId cs2=23 cs3Label=MitreTechniques cs3=T1059.001 ",
            r"cs6Label=Sha256 cs6=d783ba6567faf10fdff2d0ea3864f6756862d6c733c7f4467283da81aedc3a80 ",
            r"flexString1Label=PortalUrl flexString1=https://security.microsoft.com/alerts/daefa1828b-dd4e-405c-8a3b-aa28596830dd_1?tid\=3adb963c-8e61-48e8-a06d-6dbb0dacea39 ",
            r"flexString2Label=Status flexString2=new deviceExternalId=3adb963c-8e61-48e8-a06d-6dbb0dacea39 deviceCustomDate1Label=LastUpdateTime deviceCustomDate1=1697795647503 ",
            r"msg=A suspicious PowerShell activity was observed on the machine. \nThis behavior may indicate that PowerShell was used during installation, exploration, or in some cases in lateral movement activities which are used by attackers to invoke modules, download external payloads, or get more information about the system. Attackers usually use PowerShell to bypass security protection mechanisms by executing their payload in memory without touching the disk and leaving any trace."
        )
    );
}

#[test]
fn graph_alert_with_file_evidence_prefers_it_and_falls_back_to_the_process_user() {
    assert_eq!(
        line(GRAPH_ALERTS_DOCS, 0, Feed::GraphAlerts),
        concat!(
            r"CEF:0|Microsoft|Microsoft Defender XDR|2.0|e0da400f-affd-43ef-b1d5-afc2eb6f2756|Suspicious execution of hidden file|3|",
            r"rt=1619525967721 start=1619423150116 end=1619942218222 externalId=da637551227677560813_-961444813 ",
            r"cat=DefenseEvasion sourceServiceName=antivirus shost=tempDns suser=SYSTEM sntdom=NT AUTHORITY ",
            r"fname=MsSense.exe filePath=C:\\Program Files\\temp fileHash=5f1e8acedc065031aad553b710838eb366cfee9a ",
            r"cs2Label=IncidentId cs2=28282 cs3Label=MitreTechniques cs3=T1564.001 ",
            r"cs6Label=Sha256 cs6=8963a19fb992ad9a76576c5638fd68292cffb9aaac29eb8285f9abf6196a7dec ",
            r"flexString1Label=PortalUrl flexString1=https://security.microsoft.com/alerts/da637551227677560813_-961444813?tid\=b3c1b5fc-828c-45fa-a1e1-10d74f6d6e9c ",
            r"flexString2Label=Status flexString2=new deviceExternalId=3adb963c-8e61-48e8-a06d-6dbb0dacea39 deviceCustomDate1Label=LastUpdateTime deviceCustomDate1=1619965141326 ",
            r"msg=A hidden file has been launched. This activity could indicate a compromised host. Attackers often hide files associated with malicious tools to evade file system inspection and defenses."
        )
    );
}

#[test]
fn mde_alert_sample_keeps_the_legacy_product_and_keys() {
    assert_eq!(
        line(MDE_ALERTS, 0, Feed::MdeAlerts),
        concat!(
            r"CEF:0|Microsoft|Microsoft Defender ATP|2.0|17e10bbc-3a68-474a-8aad-faef14d43952|Low-reputation arbitrary code executed by signed executable|3|",
            r"rt=1611693237722 start=1611693092956 end=1611693093057 externalId=da637472900382838869_1364969609 ",
            r"cat=Execution sourceServiceName=WindowsDefenderAtp shost=temp123.middleeast.corp.microsoft.com ",
            r"sourceDnsDomain=middleeast.corp.microsoft.com suser=temp123 sntdom=DOMAIN ",
            r"fname=suspicious.dll filePath=c:\\temp fileHash=8563f95b2f8a284fc99da44500cd51a77c1ff36c ",
            r"cs2Label=IncidentId cs2=1126093 cs3Label=MitreTechniques cs3=T1064,T1085,T1220 ",
            r"cs6Label=Sha256 cs6=dc0ade0c95d6db98882bc8fa6707e64353cd6f7767ff48d6a81a6c2aef21c608 ",
            r"flexString2Label=Status flexString2=New deviceExternalId=3adb963c-8e61-48e8-a06d-6dbb0dacea39 deviceCustomDate1Label=LastUpdateTime deviceCustomDate1=1611693239200 ",
            r"msg=Binaries signed by Microsoft can be used to run low-reputation arbitrary code. This technique hides the execution of malicious code within a trusted process. As a result, the trusted process might exhibit suspicious behaviors, such as opening a listening port or connecting to a command-and-control (C&C) server."
        )
    );
}

#[test]
fn graph_incident_sample_maps_triage_fields() {
    assert_eq!(
        line(GRAPH_INCIDENTS, 0, Feed::GraphIncidents),
        concat!(
            r"CEF:0|Microsoft|Microsoft Defender XDR|2.0|incident|Multi-stage incident involving Initial access & Command and control on multiple endpoints reported by multiple sources|5|",
            r"rt=1628844215553 externalId=2972395 cs1Label=Classification cs1=truePositive cs2Label=IncidentId cs2=2972395 ",
            r"cs3Label=Tags cs3=Demo,Defender Experts cs4Label=AssignedTo cs4=KaiC@contoso.onmicrosoft.com ",
            r"cs5Label=Determination cs5=multiStagedAttack cn1Label=AlertCount cn1=1 ",
            r"flexString1Label=PortalUrl flexString1=https://security.microsoft.com/incidents/2972395?tid\=12f988bf-16f1-11af-11ab-1d7cd011db47 ",
            r"flexString2Label=Status flexString2=active deviceExternalId=3adb963c-8e61-48e8-a06d-6dbb0dacea39 deviceCustomDate1Label=LastUpdateTime deviceCustomDate1=1632994545113 ",
            r"msg=Microsoft observed Raspberry Robin worm activity spreading through infected USB on multiple devices in your environment. From available intel, these infections could be a potential precursor activity to ransomware deployment. ..."
        )
    );
}

#[test]
fn m365d_incident_sample_maps_triage_fields() {
    assert_eq!(
        line(M365D_INCIDENTS, 1, Feed::M365dIncidents),
        concat!(
            r"CEF:0|Microsoft|Microsoft Defender XDR|2.0|incident|'Mimikatz' hacktool was detected on one endpoint|3|",
            r"rt=1599394683626 externalId=924521 cs1Label=Classification cs1=Unknown cs2Label=IncidentId cs2=924521 ",
            r"cs5Label=Determination cs5=NotAvailable cn1Label=AlertCount cn1=1 flexString2Label=Status flexString2=Active ",
            r"deviceExternalId=3adb963c-8e61-48e8-a06d-6dbb0dacea39 deviceCustomDate1Label=LastUpdateTime deviceCustomDate1=1599394683810"
        )
    );
}

#[test]
fn standard_test_vectors() {
    // sinks.md §2.2, verified there against liblognorm and syslog-ng.
    let mut l = String::from("CEF:0|");
    for h in [
        "Vendor|Pipe",
        "Prod\\Slash",
        "1.0",
        "100",
        "name with = and | pipe",
        "7",
    ] {
        escape_header(h, &mut l);
        l.push('|');
    }
    let mut ext = Extension::new(&mut l);
    ext.text("msg", 1023, "line1\nline2\r\nline3");
    ext.labelled("cs1", "cs1Label", "eq", 4000, "a=b c\\d");
    ext.text("cs2", 4000, "pipe | in ext");
    assert_eq!(
        l,
        r"CEF:0|Vendor\|Pipe|Prod\\Slash|1.0|100|name with = and \| pipe|7|msg=line1\nline2\r\nline3 cs1Label=eq cs1=a\=b c\\d cs2=pipe | in ext"
    );
    let mut p = String::new();
    escape_extension(r"C:\Windows\System32\Robocopy.exe", &mut p);
    assert_eq!(p, r"C:\\Windows\\System32\\Robocopy.exe");
}

#[test]
fn nul_in_a_value_becomes_a_replacement_character_not_the_end_of_the_message() {
    // Regression: syslog-ng cut the message at a raw NUL in `request` and lost every later
    // field (tests/syslog_conformance.rs).
    let mut e = alert_with(|d| {
        d["description"] = Value::String("before\0after".into());
        d["evidence"][0]["deviceDnsName"] = Value::String("host\0name".into());
    });
    e.title = Some("title\0tail".into());
    let l = to_line(&e, &CefOptions::default());
    assert!(!l.contains('\0'), "{l}");
    assert!(l.contains("|title\u{FFFD}tail|"), "{l}");
    assert!(l.contains(" shost=host\u{FFFD}name "), "{l}");
    assert!(l.ends_with(" msg=before\u{FFFD}after"), "{l}");
}

#[test]
fn header_never_carries_a_line_break() {
    let mut h = String::new();
    escape_header("two\r\nlines\n", &mut h);
    assert_eq!(h, "two  lines ");
}

#[test]
fn severity_numbers_fall_in_the_cef_bands() {
    assert_eq!(severity_number(Severity::Unknown), 0);
    assert_eq!(severity_number(Severity::Informational), 1);
    assert_eq!(severity_number(Severity::Low), 3); // 0-3 Low
    assert_eq!(severity_number(Severity::Medium), 5); // 4-6 Medium
    assert_eq!(severity_number(Severity::High), 8); // 7-8 High
}

#[test]
fn options_override_vendor_product_and_version_with_escaping() {
    let opts = CefOptions {
        device_vendor: "Micro|soft".into(),
        device_product: Some("Microsoft Defender ATP".into()),
        device_version: "9".into(),
    };
    let l = to_line(&event(GRAPH_INCIDENTS, 0, Feed::GraphIncidents), &opts);
    assert!(
        l.starts_with(r"CEF:0|Micro\|soft|Microsoft Defender ATP|9|incident|"),
        "{l}"
    );
}

fn alert_with(f: impl FnOnce(&mut Value)) -> Event {
    let mut e = event(GRAPH_ALERTS, 0, Feed::GraphAlerts);
    let mut doc: Value = serde_json::from_str(e.raw.get()).unwrap();
    f(&mut doc);
    e.raw = RawValue::from_string(doc.to_string()).unwrap().into();
    e
}

#[test]
fn long_text_is_cut_to_the_dictionary_length_in_characters() {
    // 'é' is two bytes: a byte-based cut would land inside a character.
    let mut e = alert_with(|d| d["description"] = Value::String("é".repeat(3000)));
    e.title = Some("ü".repeat(600));
    let l = to_line(&e, &CefOptions::default());
    let (header, ext) = parse(&l);
    assert_eq!(header[5], "ü".repeat(NAME_MAX));
    assert_eq!(value(&ext, "msg"), Some("é".repeat(1023)));
}

#[test]
fn an_id_too_long_for_external_id_is_left_out_not_cut() {
    let mut e = alert_with(|_| ());
    e.id = format!("da{}_12", "0".repeat(38));
    let (_, ext) = parse(&to_line(&e, &CefOptions::default()));
    assert_eq!(value(&ext, "externalId"), None);
    e.id = "da637472900382838869_1364969609".into();
    let (_, ext) = parse(&to_line(&e, &CefOptions::default()));
    assert_eq!(value(&ext, "externalId").as_deref(), Some(e.id.as_str()));
}

#[test]
fn ipv6_evidence_goes_to_c6a2_and_bad_addresses_nowhere() {
    let set_ip = |ip: &'static str| {
        alert_with(move |d| {
            for ev in d["evidence"].as_array_mut().unwrap() {
                if ev["@odata.type"] == "#microsoft.graph.security.ipEvidence" {
                    ev["ipAddress"] = Value::String(ip.into());
                }
            }
        })
    };
    let (_, ext) = parse(&to_line(
        &set_ip("fe80::cfe4:80b:615c:38fb"),
        &CefOptions::default(),
    ));
    assert_eq!(
        value(&ext, "c6a2").as_deref(),
        Some("fe80::cfe4:80b:615c:38fb")
    );
    assert_eq!(
        value(&ext, "c6a2Label").as_deref(),
        Some("Source IPv6 Address")
    );
    assert_eq!(value(&ext, "src"), None);
    let (_, ext) = parse(&to_line(&set_ip("not-an-ip"), &CefOptions::default()));
    assert_eq!(value(&ext, "src"), None);
    assert_eq!(value(&ext, "c6a2"), None);
}

#[test]
fn a_document_that_is_not_an_object_still_gives_a_valid_line() {
    let mut e = event_with_raw("[1,2]");
    e.title = None;
    let l = to_line(&e, &CefOptions::default());
    assert_eq!(
        l,
        "CEF:0|Microsoft|Microsoft Defender XDR|2.0|alert|Defender alert|5|\
         externalId=daefa1828b-dd4e-405c-8a3b-aa28596830dd_1 \
         deviceExternalId=3adb963c-8e61-48e8-a06d-6dbb0dacea39 deviceCustomDate1Label=LastUpdateTime deviceCustomDate1=1697795647503"
    );
}

#[test]
fn name_falls_back_to_the_document_title() {
    let mut e = event(M365D_INCIDENTS, 0, Feed::M365dIncidents);
    e.title = None;
    let (h, _) = parse(&to_line(&e, &CefOptions::default()));
    assert_eq!(h[5], "Ransomware activity");
}

/// Keys the mapping may write, with their dictionary length (characters); `usize::MAX`
/// for numbers, timestamps and addresses. Written from sinks.md §2.3, independently of the
/// constants in `mapping.rs`.
const DICTIONARY: &[(&str, usize)] = &[
    ("rt", usize::MAX),
    ("start", usize::MAX),
    ("end", usize::MAX),
    ("externalId", 40),
    ("deviceExternalId", 255),
    ("cat", 1023),
    ("sourceServiceName", 1023),
    ("shost", 1023),
    ("sourceDnsDomain", 255),
    ("suser", 1023),
    ("sntdom", 255),
    ("suid", 1023),
    ("src", usize::MAX),
    ("c6a2", usize::MAX),
    ("c6a2Label", 1023),
    ("request", 1023),
    ("fname", 1023),
    ("filePath", 1023),
    ("fileHash", 255),
    ("cs1", 4000),
    ("cs2", 4000),
    ("cs3", 4000),
    ("cs4", 4000),
    ("cs5", 4000),
    ("cs6", 4000),
    ("cs1Label", 1023),
    ("cs2Label", 1023),
    ("cs3Label", 1023),
    ("cs4Label", 1023),
    ("cs5Label", 1023),
    ("cs6Label", 1023),
    ("cn1", usize::MAX),
    ("cn1Label", 1023),
    ("flexString1", 1023),
    ("flexString1Label", 128),
    ("flexString2", 1023),
    ("flexString2Label", 128),
    ("deviceCustomDate1", usize::MAX),
    ("deviceCustomDate1Label", 1023),
    ("msg", 1023),
];

#[test]
fn every_sample_line_decodes_with_dictionary_keys_within_their_lengths() {
    for (page, feed, n) in [
        (GRAPH_ALERTS, Feed::GraphAlerts, 2),
        (GRAPH_ALERTS_DOCS, Feed::GraphAlerts, 1),
        (MDE_ALERTS, Feed::MdeAlerts, 1),
        (M365D_INCIDENTS, Feed::M365dIncidents, 3),
        (GRAPH_INCIDENTS, Feed::GraphIncidents, 1),
    ] {
        for i in 0..n {
            check_line(&line(page, i, feed));
        }
    }
}

/// Decodes `l` and checks every key is a dictionary key used within its length, each label
/// precedes its value, and no key repeats.
fn check_line(l: &str) {
    let (header, ext) = parse(l);
    assert_eq!(header.len(), 7, "{l}");
    assert_eq!(header[0], "CEF:0");
    let sev: u8 = header[6].parse().unwrap();
    assert!(sev <= 10);
    let mut seen = std::collections::HashSet::new();
    for (k, v) in &ext {
        let max = DICTIONARY
            .iter()
            .find(|(name, _)| name == k)
            .unwrap_or_else(|| panic!("{k} is not a dictionary key the mapping may use"))
            .1;
        assert!(k.chars().all(|c| c.is_ascii_alphanumeric()), "{k}");
        assert!(v.chars().count() <= max, "{k} longer than {max}");
        assert!(!v.is_empty(), "{k} empty");
        assert!(seen.insert(k.clone()), "{k} repeated");
        if let Some(base) = k.strip_suffix("Label") {
            assert!(ext.iter().any(|(k2, _)| k2 == base), "{k} without {base}");
        }
    }
}

// ---- reference decoder, written from the standard, independent of the encoder ----

/// Splits a CEF line into its 7 unescaped header fields and its decoded extension pairs.
/// Panics on anything the standard does not allow: an escape other than `\\` / `\|` in
/// the header or `\\` `\=` `\n` `\r` in the extension, a raw CR/LF, a bare `=` inside a
/// value, or a key that is not alphanumeric.
fn parse(line: &str) -> (Vec<String>, Vec<(String, String)>) {
    assert!(!line.contains(['\r', '\n']), "raw line break in {line:?}");
    let mut header = Vec::new();
    let mut field = String::new();
    let mut chars = line.char_indices();
    let mut ext_start = line.len();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e @ ('\\' | '|'))) => field.push(e),
                other => panic!("bad header escape {other:?} in {line:?}"),
            },
            '|' => {
                header.push(std::mem::take(&mut field));
                if header.len() == 7 {
                    ext_start = i + 1;
                    break;
                }
            }
            c => field.push(c),
        }
    }
    assert_eq!(header.len(), 7, "header of {line:?}");
    (header, parse_extension(&line[ext_start..]))
}

fn parse_extension(ext: &str) -> Vec<(String, String)> {
    let b = ext.as_bytes();
    let mut eqs = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'=' => {
                eqs.push(i);
                i += 1;
            }
            _ => i += 1,
        }
    }
    let mut pairs = Vec::new();
    let mut key_start = 0;
    for (n, &eq) in eqs.iter().enumerate() {
        let key = &ext[key_start..eq];
        assert!(
            !key.is_empty() && key.bytes().all(|c| c.is_ascii_alphanumeric()),
            "bad key {key:?} in {ext:?}"
        );
        let value_end = match eqs.get(n + 1) {
            Some(&next) => {
                let sp = eq + 1 + ext[eq + 1..next].rfind(' ').expect("space before key");
                key_start = sp + 1;
                sp
            }
            None => ext.len(),
        };
        pairs.push((key.to_string(), unescape_value(&ext[eq + 1..value_end])));
    }
    if eqs.is_empty() {
        assert!(ext.is_empty(), "extension without pairs: {ext:?}");
    }
    pairs
}

fn unescape_value(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(match chars.next() {
                Some('\\') => '\\',
                Some('=') => '=',
                Some('n') => '\n',
                Some('r') => '\r',
                other => panic!("bad extension escape {other:?} in {v:?}"),
            }),
            '=' => panic!("bare = in value {v:?}"),
            c => out.push(c),
        }
    }
    out
}

fn unescape_header(h: &str) -> String {
    let (fields, _) = parse(&format!("CEF:0|{h}|p|v|s|n|0|"));
    fields[1].clone()
}

fn value(ext: &[(String, String)], key: &str) -> Option<String> {
    ext.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

proptest! {
    #[test]
    fn header_escaping_is_reversible_and_never_leaves_a_bare_pipe(s in any::<String>()) {
        let mut h = String::new();
        escape_header(&s, &mut h);
        // The decoder panics on a bare `|` inside the field (it would split the header
        // into more than 7 fields) and on raw CR/LF.
        prop_assert_eq!(
            unescape_header(&h),
            s.replace(['\r', '\n'], " ").replace('\0', NUL_REPLACEMENT)
        );
    }

    #[test]
    fn extension_escaping_is_reversible_and_never_leaves_a_bare_equals(
        s in any::<String>(),
        t in "[=\\\\|\r\n a-z]{0,20}",
    ) {
        for v in [&s, &t] {
            let mut e = String::new();
            escape_extension(v, &mut e);
            prop_assert!(!e.contains(['\r', '\n', '\0']));
            // unescape_value panics on a bare `=`.
            prop_assert_eq!(unescape_value(&e), v.replace('\0', NUL_REPLACEMENT));
        }
    }

    #[test]
    fn truncation_never_splits_a_character(s in any::<String>(), max in 0usize..64) {
        let t = truncate_chars(&s, max);
        prop_assert!(s.is_char_boundary(t.len()));
        prop_assert!(s.starts_with(t));
        prop_assert_eq!(t.chars().count(), s.chars().count().min(max));
    }

    #[test]
    fn any_header_and_values_decode_back(
        fields in proptest::collection::vec("[^\r\n]{0,40}", 6),
        values in proptest::collection::vec("\\PC{1,40}", 1..6),
    ) {
        let mut l = String::from("CEF:0|");
        for f in &fields {
            escape_header(f, &mut l);
            l.push('|');
        }
        let mut ext = Extension::new(&mut l);
        let keys = ["cs1", "cs2", "cs3", "cs4", "cs5", "cs6"];
        let mut expected = Vec::new();
        for (k, v) in keys.iter().zip(&values) {
            ext.text(k, 4000, v);
            let trimmed = v.trim();
            if !trimmed.is_empty() {
                expected.push((k.to_string(), trimmed.to_string()));
            }
        }
        let (header, pairs) = parse(&l);
        let expect_header: Vec<String> =
            fields.iter().map(|f| f.replace('\0', NUL_REPLACEMENT)).collect();
        prop_assert_eq!(&header[1..], &expect_header[..]);
        prop_assert_eq!(pairs, expected);
    }

    #[test]
    fn any_alert_text_maps_to_a_line_that_decodes_to_it(
        title in "\\PC{0,80}",
        description in any::<String>(),
        category in "[a-z=|\\\\ \n]{0,30}",
        host in "[a-zA-Z0-9.=|\\\\-]{0,30}",
    ) {
        let mut e = alert_with(|d| {
            d["description"] = Value::String(description.clone());
            d["category"] = Value::String(category.clone());
            d["evidence"][0]["deviceDnsName"] = Value::String(host.clone());
        });
        e.title = Some(title.clone());
        let l = to_line(&e, &CefOptions::default());
        check_line(&l);
        let (header, ext) = parse(&l);
        let expect_name = if title.trim().is_empty() {
            "Suspicious PowerShell command line".to_string()
        } else {
            truncate_chars(title.trim(), NAME_MAX).trim_end().replace(['\r', '\n'], " ")
        };
        prop_assert_eq!(&header[5], &expect_name);
        let expect_msg = truncate_chars(description.trim(), 1023)
            .trim_end()
            .replace('\0', NUL_REPLACEMENT);
        prop_assert_eq!(value(&ext, "msg").unwrap_or_default(), expect_msg);
        prop_assert_eq!(value(&ext, "cat").unwrap_or_default(), category.trim().to_string());
        prop_assert_eq!(value(&ext, "shost").unwrap_or_default(), host.trim().to_string());
    }
}
