//! Injected token-endpoint failures: what a client sees when Entra, or something in front
//! of it, misbehaves.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// A fault on one tenant's token endpoints (`/oauth2/token`, `/oauth2/v2.0/token`,
/// `/devicecode`). Live: set and cleared while clients run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    /// 503 with a plain-text body.
    Down,
    /// 503 with an HTML error page, as a front door or proxy returns it — not JSON.
    Html,
    /// The connection is dropped before any response byte is written.
    Reset,
    /// The request is answered normally after this delay.
    Slow(Duration),
}

impl TokenFault {
    /// The response that replaces the token endpoint's, or `None` when the request goes
    /// on (after [`TokenFault::Slow`]'s delay, which the caller sleeps).
    pub(crate) fn response(self) -> Option<Response> {
        match self {
            TokenFault::Down => Some(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    )],
                    "Service Unavailable",
                )
                    .into_response(),
            ),
            TokenFault::Html => Some(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/html; charset=utf-8"),
                    )],
                    HTML_503,
                )
                    .into_response(),
            ),
            TokenFault::Reset => Some(reset()),
            TokenFault::Slow(_) => None,
        }
    }
}

const HTML_503: &str = "<!DOCTYPE html>\r\n<html><head><title>Service Unavailable</title></head>\r\n<body><h2>Our services aren't available right now</h2><p>We're working to restore all services as soon as possible. Please check back soon.</p></body></html>\r\n";

/// A response whose body fails on its first poll. hyper then closes the connection
/// without flushing the already-encoded status line, so the client sees the connection
/// close before any response — the nearest a handler can get to a reset.
fn reset() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated connection reset",
        ))
    });
    Response::new(Body::from_stream(stream))
}
