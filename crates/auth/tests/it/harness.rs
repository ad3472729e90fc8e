//! The simulator's Entra, served on 127.0.0.1:0 from a runtime on its own thread, so that
//! its requests keep being answered whatever the test's runtime does and its own logs stay
//! out of the test's tracing capture.

use relay_auth::{Credential, TenantAuth, TokenVersion};
use relay_config::{Audience, Secret};
use relay_sim::entra::{AppRegistration, Entra, EntraConfig, GrantKind, TokenFault};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

pub struct SimEntra {
    pub entra: Arc<Entra>,
    pub base: Url,
    pub apps: Vec<AppRegistration>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Which credential a test tenant uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RefreshToken,
    RefreshTokenWithSecret,
    ClientSecret,
    Certificate,
}

pub struct SimOptions {
    pub tenants: usize,
    pub access_token_lifetime: Duration,
    pub refresh_token_grace: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            tenants: 3,
            access_token_lifetime: Duration::from_secs(3599),
            refresh_token_grace: Duration::from_secs(60),
        }
    }
}

impl SimEntra {
    pub fn start(opts: SimOptions) -> SimEntra {
        let apps: Vec<AppRegistration> = (0..opts.tenants)
            .map(|i| AppRegistration {
                tenant_id: uuid::Uuid::new_v4().to_string(),
                client_id: uuid::Uuid::new_v4().to_string(),
                client_secret: format!("sim-client-secret-{i}-{}", uuid::Uuid::new_v4().simple()),
                initial_refresh_token: format!(
                    "sim-initial-rt-{i}-{}",
                    uuid::Uuid::new_v4().simple()
                ),
            })
            .collect();
        let entra = Entra::new(
            EntraConfig {
                access_token_lifetime: opts.access_token_lifetime,
                refresh_token_grace: opts.refresh_token_grace,
                ..EntraConfig::default()
            },
            apps.clone(),
        );
        let router = entra.router();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = shutdown_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        let base = Url::parse(&format!("http://{addr}/")).unwrap();
        entra.set_issuer_base(base.clone());
        SimEntra {
            entra,
            base,
            apps,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    pub fn tenant_id(&self, i: usize) -> &str {
        &self.apps[i].tenant_id
    }

    /// A `TenantAuth` named `name` for simulated tenant `i`.
    pub fn tenant(&self, name: &str, i: usize, kind: Kind, version: TokenVersion) -> TenantAuth {
        let app = &self.apps[i];
        let credential = match kind {
            Kind::RefreshToken => Credential::RefreshToken {
                refresh_token: Secret::new(app.initial_refresh_token.clone()),
                client_secret: None,
            },
            Kind::RefreshTokenWithSecret => Credential::RefreshToken {
                refresh_token: Secret::new(app.initial_refresh_token.clone()),
                client_secret: Some(Secret::new(app.client_secret.clone())),
            },
            Kind::ClientSecret => Credential::ClientSecret {
                secret: Secret::new(app.client_secret.clone()),
            },
            Kind::Certificate => {
                let (cert, key) = crate::util::identity();
                self.entra
                    .register_certificate(&app.tenant_id, &app.client_id, cert)
                    .unwrap();
                Credential::Certificate {
                    cert_pem: cert.clone(),
                    key_pem: Secret::new(key.clone()),
                }
            }
        };
        crate::util::tenant(
            name,
            &app.tenant_id,
            &self.base,
            &app.client_id,
            credential,
            version,
        )
    }

    /// Token requests of `grant` the simulator has seen for tenant `i`.
    pub fn requests(&self, i: usize, grant: GrantKind) -> u64 {
        self.entra
            .token_requests()
            .tenant_requests(self.tenant_id(i), grant)
    }

    pub fn max_in_flight(&self, i: usize, grant: GrantKind) -> u64 {
        self.entra
            .token_requests()
            .max_in_flight(self.tenant_id(i), grant)
    }

    pub fn fault(&self, i: usize, fault: Option<TokenFault>) {
        self.entra.set_token_fault(self.tenant_id(i), fault);
    }

    /// Every secret the simulator's apps have and the test certificate's key lines.
    pub fn secrets(&self) -> Vec<String> {
        let (_, key) = crate::util::identity();
        let mut out: Vec<String> = self
            .apps
            .iter()
            .flat_map(|a| [a.client_secret.clone(), a.initial_refresh_token.clone()])
            .collect();
        out.extend(key.lines().skip(1).take(3).map(str::to_string));
        out
    }

    /// Checks `token` as an API of `audience` would; returns the tenant id it is for.
    pub fn verify(&self, token: &Secret, audience: Audience) -> String {
        let header = format!("Bearer {}", token.expose());
        self.entra
            .verify_bearer(Some(&header), audience)
            .unwrap_or_else(|e| panic!("the simulated API refuses the token: {e:?}"))
            .tenant_id
    }
}

impl Drop for SimEntra {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Not joined: hyper's graceful shutdown may wait for the test's pooled
        // connections, and the thread ends with the process anyway.
        drop(self.thread.take());
    }
}
