//! The Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! Why not `metrics` + `metrics-exporter-prometheus`: that pair is built for push-style
//! instrumentation — call sites increment handles in a global registry and the exporter
//! renders whatever the registry accumulated. Our numbers already live in one place, the
//! relay's [`RelayStatus`](relay_pipeline::RelayStatus), read at scrape time. Going through
//! the recorder would mean replaying every value of every snapshot into the registry
//! (`absolute()` on counters, `set()` on gauges) on each scrape, keeping series of removed
//! tenants until an idle timeout, and a second copy of the state to keep in step. The
//! format itself is a few lines of text per sample with three escaping rules, so a small,
//! tested writer is simpler and exactly as correct.

use std::fmt::Write;

/// What a metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up (until the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted in cumulative buckets, with their sum and count: the
    /// `_bucket{le="..."}`, `_sum` and `_count` series of one name.
    Histogram,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// A whole exposition, one metric family after the other.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Exposition::default()
    }

    /// Starts the family `name`: writes its `# HELP` and `# TYPE` lines. Its samples
    /// follow through the returned writer, so they cannot be interleaved with another
    /// family's (the format requires a family's lines to be contiguous).
    pub fn family(&mut self, name: &'static str, kind: MetricType, help: &str) -> Family<'_> {
        debug_assert!(valid_name(name), "invalid metric name {name:?}");
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        Family {
            out: &mut self.out,
            name,
        }
    }

    /// The text, ready to serve as `text/plain; version=0.0.4`.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The samples of one family.
#[derive(Debug)]
pub struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    /// One sample: `name{label="value",...} value`.
    pub fn sample(&mut self, labels: &[(&'static str, &str)], value: f64) -> &mut Self {
        self.line("", labels, None, value);
        self
    }

    /// One histogram (of a [`MetricType::Histogram`] family): a `name_bucket` sample per
    /// bucket with its upper bound as the `le` label, then `name_sum` and `name_count`.
    /// `buckets` are `(upper bound, observations at or below it)` in ascending order and
    /// must end with the `+Inf` bucket, whose value is the count.
    pub fn histogram(
        &mut self,
        labels: &[(&'static str, &str)],
        buckets: impl IntoIterator<Item = (f64, u64)>,
        sum: f64,
    ) -> &mut Self {
        let mut count = 0;
        let mut last_bound = f64::NEG_INFINITY;
        for (bound, n) in buckets {
            debug_assert!(bound > last_bound && n >= count, "buckets out of order");
            let le = format_value(bound);
            self.line("_bucket", labels, Some(("le", &le)), n as f64);
            (count, last_bound) = (n, bound);
        }
        debug_assert!(last_bound == f64::INFINITY, "no +Inf bucket");
        self.line("_sum", labels, None, sum);
        self.line("_count", labels, None, count as f64);
        self
    }

    /// `name<suffix>{labels,extra} value`.
    fn line(
        &mut self,
        suffix: &str,
        labels: &[(&'static str, &str)],
        extra: Option<(&'static str, &str)>,
        value: f64,
    ) {
        self.out.push_str(self.name);
        self.out.push_str(suffix);
        let mut all = labels.iter().copied().chain(extra).peekable();
        if all.peek().is_some() {
            self.out.push('{');
            for (i, (label, v)) in all.enumerate() {
                debug_assert!(valid_name(label), "invalid label name {label:?}");
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label_value(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&format_value(value));
        self.out.push('\n');
    }
}

/// Label values escape backslash, double quote and line feed.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `# HELP` text escapes backslash and line feed (a quote is fine there).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go's float syntax as Prometheus parses it: integers without a fraction, `NaN`,
/// `+Inf`, `-Inf`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        // Rust's shortest round-trip representation: `3`, `0.25`, `1e21` never appears
        // (Display writes the digits out), all of which Prometheus accepts.
        format!("{v}")
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_help_type_and_samples_literally() {
        let mut e = Exposition::new();
        e.family(
            "xdr_relay_polls_total",
            MetricType::Counter,
            "Polls that ran.",
        )
        .sample(&[("tenant", "contoso"), ("stream", "alerts")], 12.0)
        .sample(&[("tenant", "fabrikam"), ("stream", "incidents")], 0.0);
        e.family("xdr_relay_up", MetricType::Gauge, "Always 1.")
            .sample(&[], 1.0);
        assert_eq!(
            e.finish(),
            "# HELP xdr_relay_polls_total Polls that ran.\n\
             # TYPE xdr_relay_polls_total counter\n\
             xdr_relay_polls_total{tenant=\"contoso\",stream=\"alerts\"} 12\n\
             xdr_relay_polls_total{tenant=\"fabrikam\",stream=\"incidents\"} 0\n\
             # HELP xdr_relay_up Always 1.\n\
             # TYPE xdr_relay_up gauge\n\
             xdr_relay_up 1\n"
        );
    }

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let mut e = Exposition::new();
        e.family(
            "xdr_relay_sink_ack_latency_seconds",
            MetricType::Histogram,
            "Ack latency.",
        )
        .histogram(
            &[("sink", "hec")],
            [(0.1, 1), (2.5, 3), (f64::INFINITY, 4)],
            75.25,
        )
        .histogram(
            &[("sink", "file")],
            [(0.1, 0), (2.5, 0), (f64::INFINITY, 0)],
            0.0,
        );
        assert_eq!(
            e.finish(),
            "# HELP xdr_relay_sink_ack_latency_seconds Ack latency.\n\
             # TYPE xdr_relay_sink_ack_latency_seconds histogram\n\
             xdr_relay_sink_ack_latency_seconds_bucket{sink=\"hec\",le=\"0.1\"} 1\n\
             xdr_relay_sink_ack_latency_seconds_bucket{sink=\"hec\",le=\"2.5\"} 3\n\
             xdr_relay_sink_ack_latency_seconds_bucket{sink=\"hec\",le=\"+Inf\"} 4\n\
             xdr_relay_sink_ack_latency_seconds_sum{sink=\"hec\"} 75.25\n\
             xdr_relay_sink_ack_latency_seconds_count{sink=\"hec\"} 4\n\
             xdr_relay_sink_ack_latency_seconds_bucket{sink=\"file\",le=\"0.1\"} 0\n\
             xdr_relay_sink_ack_latency_seconds_bucket{sink=\"file\",le=\"2.5\"} 0\n\
             xdr_relay_sink_ack_latency_seconds_bucket{sink=\"file\",le=\"+Inf\"} 0\n\
             xdr_relay_sink_ack_latency_seconds_sum{sink=\"file\"} 0\n\
             xdr_relay_sink_ack_latency_seconds_count{sink=\"file\"} 0\n"
        );
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        let mut e = Exposition::new();
        e.family("m", MetricType::Gauge, "h")
            .sample(&[("sink", "a\\b\"c\nd")], 1.0);
        assert_eq!(
            e.finish(),
            "# HELP m h\n# TYPE m gauge\nm{sink=\"a\\\\b\\\"c\\nd\"} 1\n"
        );
    }

    #[test]
    fn help_escapes_backslash_and_newline_but_not_quotes() {
        let mut e = Exposition::new();
        e.family(
            "m",
            MetricType::Counter,
            "a \"quoted\" C:\\path\nsecond line",
        );
        assert_eq!(
            e.finish(),
            "# HELP m a \"quoted\" C:\\\\path\\nsecond line\n# TYPE m counter\n"
        );
    }

    #[test]
    fn values_use_prometheus_float_syntax() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(42.0), "42");
        assert_eq!(format_value(-3.5), "-3.5");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(1_700_000_000.0), "1700000000");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1e21), "1000000000000000000000");
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("xdr_relay_lag_seconds"));
        assert!(valid_name("_x:y"));
        assert!(!valid_name("9lives"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
    }
}
