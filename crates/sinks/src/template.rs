//! Per-event names: `defender_{tenant}` as a Splunk index, `defender.{stream}` as a Kafka
//! topic. Parsed (and checked) once when the configuration is validated, rendered per event.

use crate::event::Event;
use std::fmt;

/// A string with `{placeholder}`s filled from the event: `{tenant}` (the tenant's
/// configured name), `{tenant_id}`, `{stream}` (`incidents`/`alerts`) and `{feed}`
/// (`graph_alerts`, …). No other braces are allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Tenant,
    TenantId,
    Stream,
    Feed,
}

/// A template that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {template:?}: {reason}")]
pub struct TemplateError {
    /// The template as written.
    pub template: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Template {
    /// Parses `template`, rejecting unknown placeholders and stray braces.
    pub fn parse(template: &str) -> Result<Template, TemplateError> {
        let err = |reason: String| TemplateError {
            template: template.to_string(),
            reason,
        };
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(err("'}' without '{'".into()));
            }
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| err("'{' without '}'".into()))?;
            let name = &after[..close];
            parts.push(match name {
                "tenant" => Part::Tenant,
                "tenant_id" => Part::TenantId,
                "stream" => Part::Stream,
                "feed" => Part::Feed,
                other => {
                    return Err(err(format!(
                        "unknown placeholder {{{other}}}; known: {{tenant}}, {{tenant_id}}, {{stream}}, {{feed}}"
                    )))
                }
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template {
            source: template.to_string(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Appends the template filled from `event` to `out`.
    pub fn render_into(&self, event: &Event, out: &mut String) {
        for p in &self.parts {
            out.push_str(match p {
                Part::Literal(s) => s,
                Part::Tenant => &event.tenant_name,
                Part::TenantId => &event.tenant_id,
                Part::Stream => event.stream.as_str(),
                Part::Feed => event.feed.as_str(),
            });
        }
    }

    /// The template filled from `event`.
    pub fn render(&self, event: &Event) -> String {
        let mut s = String::new();
        self.render_into(event, &mut s);
        s
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testdata::*;
    use relay_config::Feed;

    #[test]
    fn renders_every_placeholder() {
        let e = event(GRAPH_ALERTS, 0, Feed::GraphAlerts);
        let t = Template::parse("x-{tenant}/{tenant_id}.{stream}.{feed}!").unwrap();
        assert_eq!(
            t.render(&e),
            "x-contoso/3adb963c-8e61-48e8-a06d-6dbb0dacea39.alerts.graph_alerts!"
        );
        assert_eq!(Template::parse("plain").unwrap().render(&e), "plain");
        assert_eq!(t.as_str(), "x-{tenant}/{tenant_id}.{stream}.{feed}!");
    }

    #[test]
    fn rejects_unknown_placeholders_and_stray_braces() {
        let e = Template::parse("defender_{tennant}").unwrap_err();
        assert_eq!(e.template, "defender_{tennant}");
        assert!(
            e.to_string().contains("unknown placeholder {tennant}"),
            "{e}"
        );
        assert!(Template::parse("a{tenant").is_err());
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("{}").is_err());
    }
}
