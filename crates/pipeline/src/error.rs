//! What can stop the relay from being built or run.

use relay_sinks::SinkError;
use relay_state::StateError;

/// The relay could not be built from its configuration, or could not run.
///
/// Per-poll and per-delivery failures are not here: they are logged, counted in the
/// [`StatusHandle`](crate::StatusHandle) and retried; they never stop the relay.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The HTTP client could not be built (TLS backend failed to initialise).
    #[error("cannot build the {purpose} http client")]
    Http {
        /// Which client (`api` or `token`).
        purpose: &'static str,
        /// reqwest's report.
        #[source]
        source: reqwest::Error,
    },

    /// A refresh-token tenant needs the state store's encryption key to keep its rotating
    /// refresh token, and the store was opened without one.
    #[error(
        "tenant {tenant}: auth kind refresh_token needs a state key to keep its rotating refresh \
         token encrypted in the state file; set [state] key or key_file"
    )]
    StateKeyRequired {
        /// The tenant's configured name.
        tenant: String,
    },

    /// A refresh-token tenant has neither a refresh token in the state store nor a bootstrap
    /// `refresh_token` in its tenant file.
    #[error(
        "tenant {tenant}: no refresh token: none is stored in the state file and {file} has no \
         bootstrap auth.refresh_token; onboard the tenant (xdr-relay onboard)"
    )]
    NoRefreshToken {
        /// The tenant's configured name.
        tenant: String,
        /// The tenant file.
        file: String,
    },

    /// A tenant routes to no sink at all: its events would be marked delivered and go
    /// nowhere.
    #[error("tenant {tenant}: routes to no sink (set sinks = [...] in {file})")]
    NoSinks {
        /// The tenant's configured name.
        tenant: String,
        /// The tenant file.
        file: String,
    },

    /// A tenant routes to a sink that is not configured.
    #[error("tenant {tenant}: sink {sink} is not defined in [sinks]")]
    UnknownSink {
        /// The tenant's configured name.
        tenant: String,
        /// The sink name it lists.
        sink: String,
    },

    /// A sink's configuration was refused by the sink itself.
    #[error(transparent)]
    Sink(Box<SinkError>),

    /// The state store failed while the relay was being built (reading a refresh token or
    /// an outbox depth).
    #[error("{context}")]
    State {
        /// What was being done, naming the tenant or sink.
        context: String,
        /// The store's error (names the state file).
        #[source]
        source: Box<StateError>,
    },

    /// A configuration reload was refused; the running configuration is kept. Each problem
    /// names the file and key (or tenant) at fault.
    #[error("configuration reload rejected, the running configuration is kept: {}", problems.join("; "))]
    ReloadRejected {
        /// Every reason, one per sink, section or tenant.
        problems: Vec<String>,
    },

    /// A configuration reload arrived while the relay was not running its tasks.
    #[error("configuration reload refused: the relay is {phase}")]
    NotRunning {
        /// `not started yet` or `shutting down`.
        phase: &'static str,
    },
}

impl From<SinkError> for PipelineError {
    fn from(e: SinkError) -> Self {
        PipelineError::Sink(Box::new(e))
    }
}

impl PipelineError {
    /// Whether building the relay again later may succeed without anyone changing the
    /// configuration (a state file locked by another process for a moment).
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::State { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

/// `error` and its sources joined by `": "`, for log fields and `record_poll` texts. Every
/// error type of the relay keeps secrets out of its messages, so the chain is safe to store.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        // `#[error(transparent)]` wrappers repeat their source's text.
        if !text.ends_with(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn chain_joins_sources() {
        assert_eq!(chain(&Outer(Inner)), "outer: inner");
    }
}
