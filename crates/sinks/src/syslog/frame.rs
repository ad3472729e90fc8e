//! Pure syslog message building: the RFC 5424 or RFC 3164 header in front of the MSG, and
//! the RFC 6587 framing around the message on a stream transport. No I/O.
//!
//! RFC 5424 (the default):
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG
//! <132>1 2023-10-20T09:54:07.503333Z relay01 xdr-relay 4242 graph_alerts - CEF:0|Microsoft|…
//! ```
//!
//! * `PRI` = facility × 8 + [`syslog_severity`] of the event's severity.
//! * `TIMESTAMP` is the event's **version time** (its `lastUpdateDateTime`), RFC 3339 UTC with
//!   microseconds (the most RFC 5424 allows; Defender's 100 ns digit is cut, not rounded).
//!   Not the send time: formatting stays a pure function of the event, so a batch resent after
//!   a connection failure arrives byte-identical and a receiver can recognise the duplicate;
//!   and a backlog delivered late still sorts by when the alert changed. The CEF extension
//!   carries the creation time (`rt`) and the version time (`deviceCustomDate1`) as well.
//! * `HOSTNAME`, `APP-NAME`, `PROCID`, `MSGID` are printable US-ASCII (33–126) of at most 255,
//!   48, 128 and 32 characters; any other character becomes `_`, longer values are cut, an
//!   empty value is the NILVALUE `-`. `MSGID` is the feed (`graph_alerts`, `mde_alerts`,
//!   `graph_incidents`, `m365d_incidents`): it names the schema of the document inside.
//! * `STRUCTURED-DATA` is the NILVALUE `-`.
//! * MSG has no UTF-8 BOM unless configured: a BOM before `CEF:` breaks rsyslog/liblognorm
//!   CEF parsing (syslog-ng strips it).
//!
//! RFC 3164 (legacy BSD):
//!
//! ```text
//! <PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PROCID]: MSG
//! <132>Oct 20 09:54:07 relay01 xdr-relay[4242]: CEF:0|Microsoft|…
//! ```
//!
//! The day is space-padded; the time is the version time in **UTC** (RFC 3164 has no zone
//! and no year: the relay's local zone means nothing to a receiver elsewhere, and servers
//! running it are normally on UTC). `TAG` keeps `A-Z a-z 0-9 - _` (others become `_`), at
//! most 32 characters.
//!
//! Framing on TCP/TLS: RFC 6587 octet counting `LEN SP MSG` ([`Framing::OctetCounting`], the
//! default, mandatory for RFC 5425 TLS receivers), or the message followed by LF
//! ([`Framing::Lf`]). LF framing is safe only because no message contains a raw LF: CEF
//! escapes line breaks, the JSON format is one line, header fields are sanitised; a message
//! that still had one is refused ([`FrameError::LineBreak`]) rather than split in two.

use crate::event::{Event, Severity};
use chrono::{DateTime, Datelike, Timelike, Utc};
pub use relay_config::{SyslogFraming as Framing, SyslogRfc as Rfc};
use std::io::Write as _;

/// Longest HOSTNAME (RFC 5424 §6.2.4).
pub const HOSTNAME_MAX: usize = 255;
/// Longest APP-NAME (RFC 5424 §6.2.5).
pub const APP_NAME_MAX: usize = 48;
/// Longest PROCID (RFC 5424 §6.2.6).
pub const PROCID_MAX: usize = 128;
/// Longest MSGID (RFC 5424 §6.2.7).
pub const MSGID_MAX: usize = 32;
/// Longest RFC 3164 TAG (RFC 3164 §4.1.3).
pub const TAG_MAX: usize = 32;
/// The UTF-8 byte order mark RFC 5424 §6.4 puts before a MSG known to be UTF-8.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The syslog severity (RFC 5424 §6.2.1) of an event severity. Defender's scale tops out at
/// High, which is an error to look at, not an emergency of the logging host; Unknown (MDE's
/// `UnSpecified`) is a notice, like Low.
///
/// | event | syslog |
/// |---|---|
/// | high | 3 error |
/// | medium | 4 warning |
/// | low | 5 notice |
/// | unknown | 5 notice |
/// | informational | 6 informational |
pub fn syslog_severity(s: Severity) -> u8 {
    match s {
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low | Severity::Unknown => 5,
        Severity::Informational => 6,
    }
}

/// The fixed parts of every header of one sink, sanitised once at construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    rfc: Rfc,
    facility: u8,
    hostname: String,
    app_name: String,
    procid: String,
    bom: bool,
}

impl Header {
    /// A header for `rfc`. `facility` is 0–23 (larger values are clamped to 23, local7);
    /// `hostname`, `app_name` and `procid` are sanitised as the module docs say. `bom` only
    /// applies to RFC 5424.
    pub fn new(
        rfc: Rfc,
        facility: u8,
        hostname: &str,
        app_name: &str,
        procid: &str,
        bom: bool,
    ) -> Header {
        let app_name = match rfc {
            Rfc::Rfc5424 => field(app_name, APP_NAME_MAX),
            Rfc::Rfc3164 => tag(app_name),
        };
        Header {
            rfc,
            facility: facility.min(23),
            hostname: field(hostname, HOSTNAME_MAX),
            app_name,
            procid: field(procid, PROCID_MAX),
            bom: bom && rfc == Rfc::Rfc5424,
        }
    }

    /// The PRI value of an event: facility × 8 + syslog severity.
    pub fn pri(&self, severity: Severity) -> u8 {
        self.facility * 8 + syslog_severity(severity)
    }

    /// Appends the header of `event`, up to and including the space before MSG (and the BOM
    /// when configured), to `out`.
    pub fn write(&self, event: &Event, out: &mut Vec<u8>) {
        let pri = self.pri(event.severity);
        let t = &event.version_time;
        // Writing to a Vec cannot fail.
        let _ = match self.rfc {
            Rfc::Rfc5424 => {
                let msgid = field(event.feed.as_str(), MSGID_MAX);
                write!(out, "<{pri}>1 ")
                    .and_then(|()| write_rfc3339_micros(out, t))
                    .and_then(|()| {
                        write!(
                            out,
                            " {} {} {} {msgid} - ",
                            self.hostname, self.app_name, self.procid
                        )
                    })
            }
            Rfc::Rfc3164 => write!(out, "<{pri}>")
                .and_then(|()| write_rfc3164_time(out, t))
                .and_then(|()| {
                    if self.procid == "-" {
                        write!(out, " {} {}: ", self.hostname, self.app_name)
                    } else {
                        write!(
                            out,
                            " {} {}[{}]: ",
                            self.hostname, self.app_name, self.procid
                        )
                    }
                }),
        };
        if self.bom {
            out.extend_from_slice(BOM);
        }
    }
}

/// `2023-10-20T09:54:07.503333Z`: RFC 3339, UTC, microseconds (cut, not rounded, so the
/// time never moves into the next second).
fn write_rfc3339_micros(out: &mut Vec<u8>, t: &DateTime<Utc>) -> std::io::Result<()> {
    write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year().clamp(0, 9999),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        // A leap second shows as nanosecond ≥ 1e9; keep it inside the second.
        (t.nanosecond() / 1000).min(999_999)
    )
}

/// `Oct  2 09:54:07`: RFC 3164 TIMESTAMP, day space-padded, UTC.
fn write_rfc3164_time(out: &mut Vec<u8>, t: &DateTime<Utc>) -> std::io::Result<()> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.get(t.month0() as usize).copied().unwrap_or("Jan");
    write!(
        out,
        "{month} {:>2} {:02}:{:02}:{:02}",
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// An RFC 5424 header field: printable US-ASCII only (others → `_`), at most `max`
/// characters, NILVALUE `-` when empty.
fn field(value: &str, max: usize) -> String {
    let s: String = value
        .trim()
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if s.is_empty() {
        "-".to_string()
    } else {
        s
    }
}

/// An RFC 3164 TAG: `A-Z a-z 0-9 - _` (others → `_`), at most [`TAG_MAX`] characters.
fn tag(value: &str) -> String {
    let s: String = value
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(TAG_MAX)
        .collect();
    if s.is_empty() {
        "-".to_string()
    } else {
        s
    }
}

/// A message that cannot be framed as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// LF framing, and the message contains a line break: the receiver would cut it into
    /// two messages. Not produced by the relay's own formats; kept as a guard.
    #[error("the message contains a raw line break, which LF framing would split")]
    LineBreak,
    /// An empty message: octet counting has no frame for it (`MSG-LEN` starts with a
    /// non-zero digit). Never produced, since every message has a header.
    #[error("the message is empty")]
    Empty,
}

/// Appends `msg` framed for a stream transport to `out`: `LEN SP MSG` for octet counting
/// (`LEN` = bytes of MSG, decimal, no leading zero), `MSG LF` for LF framing.
pub fn frame(framing: Framing, msg: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if msg.is_empty() {
        return Err(FrameError::Empty);
    }
    match framing {
        Framing::OctetCounting => {
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{} ", msg.len());
            out.extend_from_slice(msg);
        }
        Framing::Lf => {
            if msg.contains(&b'\n') {
                return Err(FrameError::LineBreak);
            }
            out.extend_from_slice(msg);
            out.push(b'\n');
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testdata::*;
    use proptest::prelude::*;
    use relay_config::Feed;

    fn header_of(h: &Header, e: &Event) -> String {
        let mut out = Vec::new();
        h.write(e, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn h5424() -> Header {
        Header::new(Rfc::Rfc5424, 16, "relay01", "xdr-relay", "4242", false)
    }

    #[test]
    fn rfc5424_header_of_a_graph_alert() {
        // Medium → warning (4); local0 (16) → 16 × 8 + 4 = 132.
        let e = event(GRAPH_ALERTS, 0, Feed::GraphAlerts);
        assert_eq!(
            header_of(&h5424(), &e),
            "<132>1 2023-10-20T09:54:07.503333Z relay01 xdr-relay 4242 graph_alerts - "
        );
    }

    #[test]
    fn rfc3164_header_pads_the_day_and_carries_the_pid_in_the_tag() {
        let mut e = event(MDE_ALERTS, 0, Feed::MdeAlerts);
        e.version_time = "2021-01-06T20:33:59.2Z".parse().unwrap();
        e.severity = Severity::High;
        let h = Header::new(Rfc::Rfc3164, 10, "relay01", "xdr-relay", "4242", true);
        // authpriv (10) × 8 + error (3) = 83; no BOM in RFC 3164.
        assert_eq!(
            header_of(&h, &e),
            "<83>Jan  6 20:33:59 relay01 xdr-relay[4242]: "
        );
        let h = Header::new(Rfc::Rfc3164, 10, "relay01", "xdr relay.d", "-", false);
        assert_eq!(
            header_of(&h, &e),
            "<83>Jan  6 20:33:59 relay01 xdr_relay_d: "
        );
    }

    #[test]
    fn severities_map_to_syslog_levels_and_pri() {
        let h = h5424();
        assert_eq!(h.pri(Severity::High), 131);
        assert_eq!(h.pri(Severity::Medium), 132);
        assert_eq!(h.pri(Severity::Low), 133);
        assert_eq!(h.pri(Severity::Unknown), 133);
        assert_eq!(h.pri(Severity::Informational), 134);
        let kern = Header::new(Rfc::Rfc5424, 0, "h", "a", "1", false);
        assert_eq!(kern.pri(Severity::High), 3);
        let clamped = Header::new(Rfc::Rfc5424, 200, "h", "a", "1", false);
        assert_eq!(clamped.pri(Severity::Informational), 23 * 8 + 6);
    }

    #[test]
    fn header_fields_are_sanitised_cut_and_nil_when_empty() {
        let e = event(GRAPH_INCIDENTS, 0, Feed::GraphIncidents);
        let long_app = "a".repeat(60);
        let h = Header::new(Rfc::Rfc5424, 16, "höst name", &long_app, "", false);
        let s = header_of(&h, &e);
        assert_eq!(
            s,
            format!(
                "<132>1 2021-09-30T09:35:45.113333Z h_st_name {} - graph_incidents - ",
                "a".repeat(48)
            )
        );
        let h = Header::new(Rfc::Rfc5424, 16, "", "", "", false);
        assert!(header_of(&h, &e).ends_with("Z - - - graph_incidents - "));
    }

    #[test]
    fn bom_follows_the_rfc5424_header_when_configured() {
        let e = event(GRAPH_ALERTS, 0, Feed::GraphAlerts);
        let h = Header::new(Rfc::Rfc5424, 16, "relay01", "xdr-relay", "4242", true);
        let mut out = Vec::new();
        h.write(&e, &mut out);
        assert!(out.ends_with(b"graph_alerts - \xEF\xBB\xBF"));
    }

    #[test]
    fn microseconds_are_cut_not_rounded() {
        let mut e = event(GRAPH_ALERTS, 0, Feed::GraphAlerts);
        e.version_time = "2023-12-31T23:59:59.9999999Z".parse().unwrap();
        assert!(header_of(&h5424(), &e).contains(" 2023-12-31T23:59:59.999999Z "));
        e.version_time = "2024-02-29T00:00:00Z".parse().unwrap();
        assert!(header_of(&h5424(), &e).contains(" 2024-02-29T00:00:00.000000Z "));
    }

    #[test]
    fn octet_counting_and_lf_frames() {
        let msg = "<132>1 2023-10-20T09:54:07.503333Z h a 1 graph_alerts - CEF:0|x|é|";
        let mut out = Vec::new();
        frame(Framing::OctetCounting, msg.as_bytes(), &mut out).unwrap();
        // "é" is two bytes: 66 characters, 67 bytes.
        assert_eq!(msg.chars().count(), 66);
        assert_eq!(String::from_utf8(out.clone()).unwrap(), format!("67 {msg}"));
        frame(Framing::Lf, msg.as_bytes(), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("67 {msg}{msg}\n"));
        let mut out = Vec::new();
        assert_eq!(
            frame(Framing::Lf, b"a\nb", &mut out),
            Err(FrameError::LineBreak)
        );
        assert!(out.is_empty());
        assert_eq!(
            frame(Framing::OctetCounting, b"", &mut out),
            Err(FrameError::Empty)
        );
        // Octet counting is transparent: a line break is just another byte.
        frame(Framing::OctetCounting, b"a\nb", &mut out).unwrap();
        assert_eq!(out, b"3 a\nb");
    }

    /// Splits octet-counted frames the way a receiver does (RFC 6587 §3.4.1).
    fn deframe(mut buf: &[u8]) -> Vec<Vec<u8>> {
        let mut msgs = Vec::new();
        while !buf.is_empty() {
            let sp = buf.iter().position(|&b| b == b' ').unwrap();
            let len_text = std::str::from_utf8(&buf[..sp]).unwrap();
            assert!(!len_text.starts_with('0'), "leading zero in {len_text}");
            let len: usize = len_text.parse().unwrap();
            msgs.push(buf[sp + 1..sp + 1 + len].to_vec());
            buf = &buf[sp + 1 + len..];
        }
        msgs
    }

    proptest! {
        #[test]
        fn octet_count_is_the_byte_length_and_frames_split_back(
            msgs in proptest::collection::vec(".{1,300}", 1..8),
        ) {
            let mut out = Vec::new();
            for m in &msgs {
                frame(Framing::OctetCounting, m.as_bytes(), &mut out).unwrap();
            }
            let back = deframe(&out);
            prop_assert_eq!(back.len(), msgs.len());
            for (b, m) in back.iter().zip(&msgs) {
                prop_assert_eq!(std::str::from_utf8(b).unwrap(), m.as_str());
            }
        }

        #[test]
        fn header_is_printable_ascii_with_eight_fields(
            host in any::<String>(),
            app in any::<String>(),
            procid in any::<String>(),
            facility in 0u8..30,
        ) {
            let e = event(GRAPH_ALERTS, 1, Feed::GraphAlerts);
            let h = Header::new(Rfc::Rfc5424, facility, &host, &app, &procid, false);
            let s = header_of(&h, &e);
            prop_assert!(s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()), "{}", s);
            let parts: Vec<&str> = s.split(' ').collect();
            // PRI+VERSION, 5 more header fields, SD, and the empty string after the last space.
            prop_assert_eq!(parts.len(), 8, "{}", s);
            prop_assert!(parts[2].len() <= HOSTNAME_MAX && !parts[2].is_empty());
            prop_assert!(parts[3].len() <= APP_NAME_MAX && !parts[3].is_empty());
            prop_assert!(parts[4].len() <= PROCID_MAX && !parts[4].is_empty());
            let pri: u8 = parts[0][1..parts[0].len() - 2].parse().unwrap();
            prop_assert!(pri <= 191);

            let h = Header::new(Rfc::Rfc3164, facility, &host, &app, &procid, false);
            let s = header_of(&h, &e);
            prop_assert!(s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()), "{}", s);
            prop_assert!(s.ends_with(": "));
        }
    }
}
