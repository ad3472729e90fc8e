//! The local redirect listener: where the administrator's browser lands after signing in
//! or consenting. It listens on 127.0.0.1 only (the redirect URI says `localhost`, which
//! is what Entra lets an app register once for every port), answers every request with a
//! small page, and hands back the first redirect that carries our `state`.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use relay_auth::interactive::{check_redirect, Redirect, RedirectCheck};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

/// A bound listener, not yet serving.
#[derive(Debug)]
pub struct RedirectListener {
    listener: TcpListener,
    port: u16,
}

#[derive(Clone)]
struct Shared {
    state: Arc<str>,
    tenant: Arc<str>,
    found: mpsc::Sender<Redirect>,
}

impl RedirectListener {
    /// Binds 127.0.0.1:`port`, or a free port when `port` is `None`.
    pub async fn bind(port: Option<u16>) -> std::io::Result<RedirectListener> {
        let listener =
            TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port.unwrap_or(0)))).await?;
        let port = listener.local_addr()?.port();
        Ok(RedirectListener { listener, port })
    }

    /// The port listened on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://localhost:PORT/`, the redirect URI sent to Entra.
    pub fn redirect_uri(&self) -> Url {
        let mut url = Url::parse("http://localhost/").unwrap_or_else(|e| {
            unreachable!("a literal URL parses: {e}");
        });
        // Setting a port on an http URL cannot fail.
        let _ = url.set_port(Some(self.port));
        url
    }

    /// Serves until a redirect carrying `state` arrives (returned, success or refusal) or
    /// `wait` passes (`None`). Requests with another state are answered and ignored.
    pub async fn wait(self, state: &str, tenant: &str, wait: Duration) -> Option<Redirect> {
        let (tx, mut rx) = mpsc::channel(1);
        let shared = Shared {
            state: Arc::from(state),
            tenant: Arc::from(tenant),
            found: tx,
        };
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let server = tokio::spawn(async move {
            axum::serve(self.listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
        });
        let found = tokio::time::timeout(wait, rx.recv()).await.ok().flatten();
        stop.cancel();
        // Graceful: the browser gets its page before the listener closes. A browser that
        // holds its connection open must not keep onboarding waiting, hence the bound.
        match tokio::time::timeout(Duration::from_secs(3), server).await {
            Ok(Ok(Err(e))) => tracing::debug!(error = %e, "redirect listener failed"),
            Ok(Err(e)) => tracing::debug!(error = %e, "redirect listener task failed"),
            Ok(Ok(Ok(()))) | Err(_) => {}
        }
        found
    }
}

async fn handle(State(s): State<Shared>, uri: Uri) -> Response {
    if uri.path() != "/" {
        return (StatusCode::NOT_FOUND, Html(page("Not found", ""))).into_response();
    }
    match check_redirect(uri.query(), &s.state) {
        RedirectCheck::Done(redirect) => {
            let answer = match &redirect {
                Redirect::Refused(e) => (
                    StatusCode::OK,
                    Html(page(
                        &format!("xdr-relay: onboarding of {} was refused", s.tenant),
                        &format!("{e}. See the terminal for what to do next."),
                    )),
                ),
                Redirect::Code(_) | Redirect::Consented { .. } => (
                    StatusCode::OK,
                    Html(page(
                        &format!("xdr-relay: sign-in for {} received", s.tenant),
                        "You can close this tab and return to the terminal.",
                    )),
                ),
            };
            // A second redirect (a reload) finds the channel full and changes nothing.
            let _ = s.found.try_send(redirect);
            answer.into_response()
        }
        RedirectCheck::WrongState => {
            tracing::warn!(
                tenant = %s.tenant,
                "ignored a redirect whose state is not the one xdr-relay sent"
            );
            (
                StatusCode::BAD_REQUEST,
                Html(page(
                    "xdr-relay: not the sign-in this terminal is waiting for",
                    "The state parameter does not match. Open the URL xdr-relay printed last.",
                )),
            )
                .into_response()
        }
        RedirectCheck::NotARedirect => (
            StatusCode::OK,
            Html(page(
                &format!("xdr-relay is waiting for the sign-in of {}", s.tenant),
                "Open the sign-in URL printed in the terminal.",
            )),
        )
            .into_response(),
    }
}

fn page(title: &str, text: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body><h1>{t}</h1><p>{x}</p></body></html>",
        t = escape(title),
        x = escape(text)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hands_back_the_first_redirect_with_our_state() {
        let l = RedirectListener::bind(None).await.unwrap();
        let port = l.port();
        assert_eq!(
            l.redirect_uri().as_str(),
            format!("http://localhost:{port}/")
        );
        let waiter =
            tokio::spawn(async move { l.wait("s-1", "contoso", Duration::from_secs(20)).await });
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let r = http
            .get(format!("{base}/favicon.ico"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let r = http.get(format!("{base}/")).send().await.unwrap();
        assert!(r.text().await.unwrap().contains("waiting"));
        let r = http
            .get(format!("{base}/?code=c&state=other"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = http
            .get(format!("{base}/?code=c-1&state=s-1"))
            .send()
            .await
            .unwrap();
        assert!(r.text().await.unwrap().contains("close this tab"));
        let got = waiter.await.unwrap();
        assert!(
            matches!(&got, Some(Redirect::Code(c)) if c.expose() == "c-1"),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn gives_up_after_the_wait() {
        let l = RedirectListener::bind(None).await.unwrap();
        assert!(l
            .wait("s", "contoso", Duration::from_millis(50))
            .await
            .is_none());
    }

    #[test]
    fn pages_escape_what_they_show() {
        assert!(page("<a>", "x & \"y\"").contains("&lt;a&gt;</h1><p>x &amp; &quot;y&quot;"));
    }
}
