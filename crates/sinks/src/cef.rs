//! ArcSight Common Event Format: one [`Event`] → one CEF line. Pure; the syslog transport
//! adds the syslog header and framing.
//!
//! ```text
//! CEF:0|Microsoft|<product>|2.0|<signature id>|<name>|<severity>|<key=value …>
//! ```
//!
//! The field mapping follows the one Microsoft shipped for its ArcSight connector (vendor
//! `Microsoft`, product `Microsoft Defender ATP`, mapping version `2.0`), carried over to the
//! fields of the current APIs; `docs/field-mappings.md` has the table. Escaping follows the
//! CEF Implementation Standard exactly:
//!
//! * header values: `\` → `\\`, `|` → `\|`; CR and LF (not allowed in the header) → space;
//! * extension values: `\` → `\\`, `=` → `\=`, CR → `\r`, LF → `\n`; `|` and spaces stay
//!   as they are;
//! * NUL, in header or extension, → U+FFFD: CEF cannot escape it and receivers end the
//!   message there;
//! * keys are CEF dictionary keys (case-sensitive), all alphanumeric;
//! * strings are cut to the dictionary's length for their key, counted in characters, never
//!   inside a UTF-8 character; identifiers are never cut (a cut id names another item);
//! * timestamps (`rt`, `start`, `end`, `deviceCustomDate1`) are epoch milliseconds, the one
//!   format in the standard's list that needs no time zone or locale;
//! * empty values are left out, leading and trailing whitespace is trimmed (the standard
//!   drops trailing spaces of the last pair anyway).

mod action;
mod doc;
#[cfg(test)]
mod legacy;
mod mapping;

use crate::event::{Event, Severity};
use relay_config::{Feed, Stream};

pub use action::{ACTIONS_PRODUCT, ACTIONS_VENDOR, ACTIONS_VERSION};

/// `Device Vendor` of every line unless configured otherwise.
pub const DEFAULT_VENDOR: &str = "Microsoft";

/// `Device Version`: Microsoft's connector used it to name the mapping version; this
/// mapping keeps its keys, so it keeps its version.
pub const MAPPING_VERSION: &str = "2.0";

/// How CEF headers are labelled.
#[derive(Debug, Clone)]
pub struct CefOptions {
    /// `Device Vendor`; default [`DEFAULT_VENDOR`].
    pub device_vendor: String,
    /// `Device Product` for every feed; `None` uses [`default_product`] per feed. Operators
    /// whose ArcSight content filters on `Microsoft Defender ATP` can set it here.
    pub device_product: Option<String>,
    /// `Device Version`; default [`MAPPING_VERSION`].
    pub device_version: String,
}

impl Default for CefOptions {
    fn default() -> Self {
        CefOptions {
            device_vendor: DEFAULT_VENDOR.to_string(),
            device_product: None,
            device_version: MAPPING_VERSION.to_string(),
        }
    }
}

/// `Device Product` per feed: Defender for Endpoint alerts keep the legacy connector's
/// `Microsoft Defender ATP`, so existing ArcSight content matches them; Graph alerts (which
/// come from every Defender product) and incidents are `Microsoft Defender XDR`.
pub fn default_product(feed: Feed) -> &'static str {
    match feed {
        Feed::MdeAlerts => "Microsoft Defender ATP",
        Feed::GraphAlerts | Feed::M365dIncidents | Feed::GraphIncidents => "Microsoft Defender XDR",
    }
}

/// The CEF header severity (0–10) of a normalized severity. CEF reads 0–3 as Low, 4–6 as
/// Medium, 7–8 as High and 9–10 as Very-High; Defender's scale tops out at High, which the
/// legacy connector sent as `High`, so High is 8, not Very-High.
pub fn severity_number(s: Severity) -> u8 {
    match s {
        Severity::Unknown => 0,
        Severity::Informational => 1,
        Severity::Low => 3,
        Severity::Medium => 5,
        Severity::High => 8,
    }
}

/// Appends the CEF line of `event` to `out`, without a line terminator.
pub fn encode(event: &Event, opts: &CefOptions, out: &mut String) {
    if event.stream == Stream::Actions {
        // Playbook audit events: the relay reports, not Defender (see `action.rs`).
        action::encode(event, out);
        return;
    }
    mapping::encode(event, opts, out);
}

/// The CEF line of `event`, without a line terminator.
pub fn to_line(event: &Event, opts: &CefOptions) -> String {
    let mut s = String::with_capacity(1024);
    encode(event, opts, &mut s);
    s
}

/// Longest `Device Vendor` / `Device Product`, in characters.
pub(crate) const VENDOR_MAX: usize = 63;
/// Longest `Device Version`.
pub(crate) const VERSION_MAX: usize = 31;
/// Longest `Device Event Class ID`.
pub(crate) const SIGNATURE_MAX: usize = 1023;
/// Longest `Name`.
pub(crate) const NAME_MAX: usize = 512;

/// Appends a header value, escaped: `\` → `\\`, `|` → `\|`, CR/LF (forbidden in the
/// header) replaced by a space, NUL replaced by U+FFFD (see [`NUL_REPLACEMENT`]).
pub fn escape_header(value: &str, out: &mut String) {
    const SPECIAL: [bool; 256] = specials(b"\\|\r\n\0");
    escape(value, out, &SPECIAL, |b| match b {
        b'\\' => "\\\\",
        b'|' => "\\|",
        b'\0' => NUL_REPLACEMENT,
        _ => " ",
    })
}

/// Appends an extension value, escaped: `\` → `\\`, `=` → `\=`, CR → `\r`, LF → `\n`,
/// NUL → U+FFFD (see [`NUL_REPLACEMENT`]). Nothing else is escaped — in particular not `|`,
/// which the standard says must stay bare.
pub fn escape_extension(value: &str, out: &mut String) {
    const SPECIAL: [bool; 256] = specials(b"\\=\r\n\0");
    escape(value, out, &SPECIAL, |b| match b {
        b'\\' => "\\\\",
        b'=' => "\\=",
        b'\r' => "\\r",
        b'\n' => "\\n",
        _ => NUL_REPLACEMENT,
    })
}

/// What a NUL character in a value becomes: U+FFFD, the replacement character. CEF has no
/// escape for it, and syslog receivers read NUL as the end of the message (syslog-ng cut a
/// line at a NUL in `request` and lost every later field — found by the syslog conformance
/// test); a JSON document can carry `\u0000` in any attacker-controlled string.
pub const NUL_REPLACEMENT: &str = "\u{FFFD}";

/// A byte table of the (ASCII) characters in `set`.
const fn specials(set: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < set.len() {
        t[set[i] as usize] = true;
        i += 1;
    }
    t
}

/// Appends `value` with each byte marked in `special` replaced by `replacement(byte)`.
fn escape(
    value: &str,
    out: &mut String,
    special: &[bool; 256],
    replacement: fn(u8) -> &'static str,
) {
    let mut start = 0;
    // Every character that needs escaping is ASCII, and no byte of a multi-byte UTF-8
    // character is, so matching bytes finds exactly those characters and every slice
    // boundary falls between characters. (A byte table rather than matching `char`s: this
    // runs over every value of every line.)
    for (i, &b) in value.as_bytes().iter().enumerate() {
        if special[usize::from(b)] {
            out.push_str(&value[start..i]);
            out.push_str(replacement(b));
            start = i + 1;
        }
    }
    out.push_str(&value[start..]);
}

/// The longest prefix of `s` with at most `max_chars` characters. CEF lengths count
/// characters; cutting on a character boundary keeps the line valid UTF-8.
pub fn truncate_chars(s: &str, max_chars: usize) -> &str {
    if s.len() <= max_chars {
        // A string has at least as many bytes as characters.
        return s;
    }
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Writes `key=value` pairs separated by single spaces. Keys are `&'static str` dictionary
/// keys from the mapping, so they are alphanumeric by construction (a test checks the list).
pub(crate) struct Extension<'a> {
    out: &'a mut String,
    start: usize,
}

impl<'a> Extension<'a> {
    pub(crate) fn new(out: &'a mut String) -> Self {
        let start = out.len();
        Extension { out, start }
    }

    fn key(&mut self, key: &str) {
        if self.out.len() > self.start {
            self.out.push(' ');
        }
        self.out.push_str(key);
        self.out.push('=');
    }

    /// A string value, trimmed and cut to `max_chars`; nothing is written when it is empty.
    pub(crate) fn text(&mut self, key: &str, max_chars: usize, value: &str) {
        let v = truncate_chars(value.trim(), max_chars).trim_end();
        if v.is_empty() {
            return;
        }
        self.key(key);
        escape_extension(v, self.out);
    }

    /// A custom field: `<key>Label=<label> <key>=<value>`, both only when `value` is not empty.
    pub(crate) fn labelled(
        &mut self,
        key: &str,
        label_key: &str,
        label: &str,
        max_chars: usize,
        value: &str,
    ) {
        if value.trim().is_empty() {
            return;
        }
        self.text(label_key, LABEL_MAX, label);
        self.text(key, max_chars, value);
    }

    /// An integer value (timestamps in epoch milliseconds, counts).
    pub(crate) fn number(&mut self, key: &str, value: i64) {
        self.key(key);
        self.out.push_str(&value.to_string());
    }
}

/// Longest `cs*Label` / `cn*Label` / `deviceCustomDate*Label`.
pub(crate) const LABEL_MAX: usize = 1023;

#[cfg(test)]
mod differential;
#[cfg(test)]
mod tests;
