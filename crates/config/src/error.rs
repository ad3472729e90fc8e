//! Configuration problems: each names its file and key, and all of them are reported at
//! once.

use std::fmt;

/// One thing wrong with the configuration.
///
/// Displays as `<file>: <key>: <message>`, e.g.
/// `tenants.d/contoso.toml: auth.client_id: must be a GUID`. `file` is relative to the
/// directory of `relay.toml` when the file lies inside it. `key` is a dotted path
/// (`sinks.splunk.batch.max_bytes`, `streams[1]`) and empty when the problem is the file
/// itself (unreadable, TOML syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file at fault, e.g. `relay.toml` or `tenants.d/contoso.toml`.
    pub file: String,
    /// The key at fault, dotted; empty for the whole file.
    pub key: String,
    /// What is wrong, lowercase; never contains a secret value.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// Every problem found while loading the configuration; never empty when returned.
///
/// Displays one problem per line, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl ConfigErrors {
    /// The problems, in file order.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Joins a key path and a child key: `("sinks.a", "url")` → `sinks.a.url`,
/// `("streams", "[1]")` → `streams[1]`.
pub(crate) fn join_key(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_string(),
        (false, true) => parent.to_string(),
        (false, false) if child.starts_with('[') => format!("{parent}{child}"),
        (false, false) => format!("{parent}.{child}"),
    }
}

/// Turns an error of the `config` crate (from parsing or from deserializing one section)
/// into a key path relative to that section and a message of ours.
///
/// `config` records the path of a deserialization error in its `Type` / `At` / `NotFound`
/// variants; serde's own messages ("unknown field `x`, expected ...") come through as
/// `Message` and are rewritten so the unknown key lands in the path.
pub(crate) fn describe_config_error(err: &config::ConfigError, text: &str) -> (String, String) {
    use config::ConfigError as E;
    let (key, message) = match err {
        E::FileParse { cause, .. } => (String::new(), describe_parse_error(cause.as_ref(), text)),
        E::Type {
            unexpected,
            expected,
            key,
            ..
        } => (
            key.clone().unwrap_or_default(),
            format!("expected {}, found {unexpected}", toml_terms(expected)),
        ),
        E::At { error, key, .. } => {
            let (inner_key, message) = describe_config_error(error, text);
            (join_key(key.as_deref().unwrap_or(""), &inner_key), message)
        }
        E::NotFound(key) => (key.clone(), "is required".to_string()),
        E::Message(message) => (String::new(), message.clone()),
        other => (String::new(), other.to_string()),
    };
    rewrite_serde_message(key, message)
}

/// Speaks of TOML tables and arrays rather than serde's maps, sequences and struct names.
fn toml_terms(expected: &str) -> &str {
    if expected.starts_with("struct ") || expected == "a map" {
        "a table"
    } else if expected == "a sequence" {
        "an array"
    } else {
        expected
    }
}

fn rewrite_serde_message(key: String, message: String) -> (String, String) {
    // serde's `invalid type: <found>, expected <what>`, said the way config's own type
    // errors are.
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.rsplit_once(", expected ") {
            return (
                key,
                format!("expected {}, found {found}", toml_terms(expected)),
            );
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, tail)) = rest.split_once('`') {
            let hint = tail.trim_start_matches(", ");
            let message = if hint.is_empty() || hint == "there are no fields" {
                "unknown key".to_string()
            } else {
                format!("unknown key; {hint}")
            };
            return (join_key(&key, field), message);
        }
    }
    (key, message)
}

/// A TOML syntax error as `TOML syntax error at line L, column C: <message>`.
fn describe_parse_error(
    cause: &(dyn std::error::Error + Send + Sync + 'static),
    text: &str,
) -> String {
    // `config` parses with toml 1.x and boxes its error; the same version is our
    // dependency, so the downcast finds it and we get the span instead of toml's
    // multi-line rendering.
    match cause.downcast_ref::<toml::de::Error>() {
        Some(e) => match e.span() {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                format!(
                    "TOML syntax error at line {line}, column {column}: {}",
                    e.message().trim_end()
                )
            }
            None => format!("TOML syntax error: {}", e.message().trim_end()),
        },
        None => format!("TOML syntax error: {cause}"),
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_display_with_file_and_key() {
        let errors = ConfigErrors(vec![
            ConfigProblem {
                file: "tenants.d/contoso.toml".into(),
                key: "auth.client_id".into(),
                message: "must be a GUID".into(),
            },
            ConfigProblem {
                file: "relay.toml".into(),
                key: String::new(),
                message: "cannot read: denied".into(),
            },
        ]);
        assert_eq!(
            errors.to_string(),
            "tenants.d/contoso.toml: auth.client_id: must be a GUID\nrelay.toml: cannot read: denied"
        );
    }

    #[test]
    fn keys_join_with_dots_and_brackets() {
        assert_eq!(join_key("", "a"), "a");
        assert_eq!(join_key("a", ""), "a");
        assert_eq!(join_key("a", "b"), "a.b");
        assert_eq!(join_key("streams", "[1]"), "streams[1]");
    }

    #[test]
    fn unknown_field_messages_move_the_key_into_the_path() {
        let (key, message) = rewrite_serde_message(
            "auth".into(),
            "unknown field `client_scret`, expected `kind` or `client_id`".into(),
        );
        assert_eq!(key, "auth.client_scret");
        assert_eq!(message, "unknown key; expected `kind` or `client_id`");
    }

    #[test]
    fn invalid_type_messages_speak_toml() {
        let (key, message) = rewrite_serde_message(
            "admin".into(),
            "invalid type: integer `5`, expected struct RawAdmin".into(),
        );
        assert_eq!(
            (key.as_str(), message.as_str()),
            ("admin", "expected a table, found integer `5`")
        );
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab", 99), (1, 3));
    }
}
