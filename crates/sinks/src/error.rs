//! What can go wrong delivering to a sink, and whether retrying can help.

use std::io;
use std::path::PathBuf;

/// A sink failed to take a batch (or to start).
///
/// The sink worker decides with [`SinkError::is_transient`]: transient errors are retried
/// with backoff, the batch staying at the head of the outbox; permanent errors stop this
/// sink with the error shown to the operator, while its outbox keeps filling (up to its
/// bound) so that nothing is lost once the operator fixes the cause and restarts.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink's configuration cannot work. Permanent: nothing changes until an operator
    /// edits the configuration.
    #[error("sink {sink}: invalid configuration: {reason}")]
    Config {
        /// The sink's configured name.
        sink: String,
        /// What is wrong, naming the key.
        reason: String,
    },

    /// A file or directory operation failed. Transient or permanent by the kind of I/O
    /// error: a full disk clears once space is freed, a path under a regular file never will.
    #[error("sink {sink}: cannot {action} {}", path.display())]
    Io {
        /// The sink's configured name.
        sink: String,
        /// What was being done, e.g. `create directory`, `write to`.
        action: &'static str,
        /// The file or directory at fault.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The destination could not be reached, did not answer in time, or answered that it is
    /// busy (connection refused, TLS handshake failure, HTTP 429/503, Kafka broker down).
    /// Transient.
    #[error("sink {sink}: {destination} is unavailable")]
    Unavailable {
        /// The sink's configured name.
        sink: String,
        /// Where the batch was going (URL without query secrets, `host:port`, broker list).
        destination: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The destination took the batch and then lost it: HEC's indexers never acknowledged
    /// it while they acknowledged later ones, or HEC forgot its acknowledgements (a
    /// restart). Transient — send it again — but no sign of overload: the worker does not
    /// narrow its window for it.
    #[error("sink {sink}: {destination} lost the batch")]
    Lost {
        /// The sink's configured name.
        sink: String,
        /// Where the batch was confirmed (URL without query secrets).
        destination: String,
        /// How it was found lost.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The destination answered and refused the batch for a reason that retrying will not
    /// fix: bad credentials, an index the token may not write, a malformed or oversized
    /// event. Permanent.
    #[error("sink {sink}: {destination} rejected the batch: {reason}")]
    Rejected {
        /// The sink's configured name.
        sink: String,
        /// Where the batch was going (URL without query secrets, `host:port`, broker list).
        destination: String,
        /// The destination's own words (status code, error text).
        reason: String,
    },
}

impl SinkError {
    /// True when retrying the same batch later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Config { .. } | SinkError::Rejected { .. } => false,
            SinkError::Unavailable { .. } | SinkError::Lost { .. } => true,
            SinkError::Io { source, .. } => io_is_transient(source),
        }
    }

    /// True when the failure says the destination is pushing back (busy, unreachable, not
    /// confirming in time): fewer batches in flight would help. A lost batch is not.
    pub fn is_push_back(&self) -> bool {
        self.is_transient() && !matches!(self, SinkError::Lost { .. })
    }

    /// The configured name of the sink that failed.
    pub fn sink(&self) -> &str {
        match self {
            SinkError::Config { sink, .. }
            | SinkError::Io { sink, .. }
            | SinkError::Unavailable { sink, .. }
            | SinkError::Lost { sink, .. }
            | SinkError::Rejected { sink, .. } => sink,
        }
    }
}

/// Errors that an operator must fix (paths, permissions, read-only mounts) are permanent;
/// everything else — a full disk, a quota, EIO on a flaky mount, an interrupted call — is
/// worth retrying with backoff.
fn io_is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    !matches!(
        e.kind(),
        NotFound
            | PermissionDenied
            | NotADirectory
            | IsADirectory
            | ReadOnlyFilesystem
            | InvalidInput
            | AlreadyExists
            | Unsupported
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: io::ErrorKind) -> SinkError {
        SinkError::Io {
            sink: "archive".into(),
            action: "write to",
            path: "/var/lib/xdr-relay/out/events.jsonl".into(),
            source: io::Error::from(kind),
        }
    }

    #[test]
    fn transient_or_permanent_by_cause() {
        assert!(io(io::ErrorKind::StorageFull).is_transient());
        assert!(io(io::ErrorKind::Interrupted).is_transient());
        assert!(io(io::ErrorKind::Other).is_transient());
        assert!(!io(io::ErrorKind::NotADirectory).is_transient());
        assert!(!io(io::ErrorKind::PermissionDenied).is_transient());
        assert!(!io(io::ErrorKind::ReadOnlyFilesystem).is_transient());
        let unavailable = SinkError::Unavailable {
            sink: "splunk".into(),
            destination: "https://splunk.example:8088/services/collector/event".into(),
            source: "HTTP 503: server is busy".into(),
        };
        assert!(unavailable.is_transient() && unavailable.is_push_back());
        let lost = SinkError::Lost {
            sink: "splunk".into(),
            destination: "https://splunk.example:8088/services/collector/ack".into(),
            source: "later requests were acknowledged".into(),
        };
        assert!(lost.is_transient() && !lost.is_push_back());
        let rejected = SinkError::Rejected {
            sink: "splunk".into(),
            destination: "https://splunk.example:8088/services/collector/event".into(),
            reason: "HTTP 403: invalid token (code 4)".into(),
        };
        assert!(!rejected.is_transient());
        assert!(!SinkError::Config {
            sink: "x".into(),
            reason: "max_files: must be at least 1".into()
        }
        .is_transient());
    }

    #[test]
    fn messages_name_sink_and_path_and_keep_the_source() {
        let e = io(io::ErrorKind::StorageFull);
        assert_eq!(
            e.to_string(),
            "sink archive: cannot write to /var/lib/xdr-relay/out/events.jsonl"
        );
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.sink(), "archive");
    }
}
