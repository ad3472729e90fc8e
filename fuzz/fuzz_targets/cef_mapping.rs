//! The CEF mapping of whatever a page carries: each item a page parses into becomes an
//! event (as the pipeline's normalize makes it; relay-pipeline itself would bring
//! librdkafka into the fuzz build) and is formatted as CEF (and as a JSON line, the file
//! sink's format). Formatting never panics, and a CEF line is one
//! line: no raw CR or LF from the document reaches syslog.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_config::Feed;
use relay_sinks::cef::{self, CefOptions};
use relay_sinks::{Event, Severity};

fuzz_target!(|data: &[u8]| {
    let Some((&which, page)) = data.split_first() else {
        return;
    };
    let feed = Feed::ALL[usize::from(which) % Feed::ALL.len()];
    let Ok(page) = relay_defender::parse_page(feed, page) else {
        return;
    };
    let options = CefOptions::default();
    for item in page.items {
        let fields = item.fields;
        let event = Event {
            tenant_id: "6b1e1f3c-1d2a-4c8e-9a7b-0c2d3e4f5a61".to_string(),
            tenant_name: "contoso".to_string(),
            stream: feed.stream(),
            feed,
            id: item.id,
            version_time: item.last_update,
            severity: fields
                .severity
                .map_or(Severity::Unknown, |s| Severity::from_api(&s)),
            title: fields
                .title
                .or(fields.display_name)
                .or(fields.incident_name),
            raw: item.raw.into(),
        };
        let line = cef::to_line(&event, &options);
        assert!(
            !line.contains('\n') && !line.contains('\r'),
            "a CEF line with a line break: {line:?}"
        );
        let mut out = Vec::new();
        relay_sinks::jsonl::encode_line(&event, &mut out);
    }
});
