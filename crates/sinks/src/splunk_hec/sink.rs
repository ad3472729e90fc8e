//! [`SplunkHecSink`]: batches of events to `/services/collector/event`, confirmed by HTTP 200
//! and, when configured, by indexer acknowledgement.

use super::ack::{AckFailure, AckTracker};
use super::client::{display_url, HecClient};
use super::config::{overlay, SplunkHecSinkConfig};
use super::request::encode_requests;
use super::response::{Decision, HecReply, HecUnavailable, ACK_DISABLED_HINT};
use crate::error::SinkError;
use crate::event::Event;
use crate::hec::HecOptions;
use crate::sink::{Acknowledgement, BatchLimits, Receipt, Sink};
use relay_config::HecOverrides;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info};
use url::Url;

/// Sends events to Splunk's HTTP Event Collector. See the [module docs](super) for the
/// guarantees.
#[derive(Debug)]
pub struct SplunkHecSink {
    name: String,
    // Shared with the ack poller task; also keeps the sink small inside `AnySink`.
    client: Arc<HecClient>,
    labels: HecLabels,
    limits: BatchLimits,
    /// When indexer acknowledgement is on: the channel's outstanding ack ids, and how long a
    /// batch may wait for its acknowledgement.
    ack: Option<(Arc<AckTracker>, Duration)>,
}

/// Envelope labels: the sink's, and per tenant.
#[derive(Debug)]
struct Labels {
    options: HecOptions,
    tenants: HashMap<String, HecOptions>,
}

/// A handle on a running HEC sink's per-tenant envelope labels (`[sink_overrides.NAME]`),
/// so a configuration reload can change one tenant's index, sourcetype or source while the
/// sink worker owns the sink. A change applies from the next batch the sink encodes,
/// including events of that tenant already queued in the outbox.
#[derive(Debug, Clone)]
pub struct HecLabels {
    sink: String,
    inner: Arc<RwLock<Labels>>,
}

impl HecLabels {
    /// The name of the sink these labels belong to.
    pub fn sink(&self) -> &str {
        &self.sink
    }

    /// Whether `overrides` would be accepted for `tenant` by [`set`](Self::set), without
    /// changing anything: a reload checks every change before applying any.
    pub fn check(&self, tenant: &str, overrides: Option<&HecOverrides>) -> Result<(), SinkError> {
        self.resolve(tenant, overrides).map(drop)
    }

    /// Sets (or with `None` removes) one tenant's `[sink_overrides.NAME]`; later batches use
    /// them.
    pub fn set(&self, tenant: &str, overrides: Option<&HecOverrides>) -> Result<(), SinkError> {
        let resolved = self.resolve(tenant, overrides)?;
        // A panic while the lock was held cannot leave the map half-updated (single
        // insert/remove calls), so a poisoned lock is still consistent.
        let mut labels = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        match resolved {
            None => {
                labels.tenants.remove(tenant);
            }
            Some(opts) => {
                labels.tenants.insert(tenant.to_string(), opts);
            }
        }
        Ok(())
    }

    fn resolve(
        &self,
        tenant: &str,
        overrides: Option<&HecOverrides>,
    ) -> Result<Option<HecOptions>, SinkError> {
        let Some(o) = overrides else {
            return Ok(None);
        };
        let labels = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        overlay(&labels.options, o, |k| {
            format!("tenant {tenant}: sink_overrides.{}.{k}", self.sink)
        })
        .map(Some)
        .map_err(|problems| SinkError::Config {
            sink: self.sink.clone(),
            reason: problems.join("; "),
        })
    }
}

impl SplunkHecSink {
    /// Validates `config` and builds the HTTP client, reading the TLS files (blocking: call
    /// at start-up). Nothing is sent until [`healthcheck`](Sink::healthcheck) or
    /// [`send`](Sink::send).
    pub fn new(config: SplunkHecSinkConfig) -> Result<SplunkHecSink, SinkError> {
        config.validate()?;
        let client = HecClient::new(&config)?;
        info!(
            sink = %config.name,
            url = %display_url(&client.event_url),
            channel = %client.channel,
            gzip = config.gzip,
            indexer_ack = config.indexer_ack.enabled,
            "splunk hec sink ready"
        );
        let name = config.name.clone();
        Ok(SplunkHecSink {
            name: name.clone(),
            labels: HecLabels {
                sink: name.clone(),
                inner: Arc::new(RwLock::new(Labels {
                    options: config.options,
                    tenants: config.tenant_options,
                })),
            },
            limits: BatchLimits {
                max_events: config.batch.max_events,
                max_bytes: config.batch.max_bytes,
                linger: config.batch.linger,
                // Without indexer ack a 200 is the confirmation: nothing stays in flight.
                max_in_flight: if config.indexer_ack.enabled {
                    config.max_in_flight
                } else {
                    1
                },
            },
            ack: config.indexer_ack.enabled.then(|| {
                (
                    Arc::new(AckTracker::new(&name, config.indexer_ack.poll_interval)),
                    config.indexer_ack.timeout,
                )
            }),
            client: Arc::new(client),
        })
    }

    /// The event endpoint, `<url>/services/collector/event`.
    pub fn event_url(&self) -> &Url {
        &self.client.event_url
    }

    /// The channel GUID sent as `X-Splunk-Request-Channel` with every request: the
    /// configured `indexer_ack.channel`, else one generated when the sink was built.
    pub fn channel(&self) -> &str {
        &self.client.channel
    }

    /// How many ack ids wait for the indexers' confirmation (0 without indexer ack).
    pub fn outstanding_acks(&self) -> usize {
        self.ack.as_ref().map_or(0, |(t, _)| t.outstanding())
    }

    /// Sets (or with `None` removes) one tenant's `[sink_overrides.NAME]`, e.g. after its
    /// tenant file changed; later batches use them.
    pub fn set_tenant_overrides(
        &mut self,
        tenant: &str,
        overrides: Option<&HecOverrides>,
    ) -> Result<(), SinkError> {
        self.labels.set(tenant, overrides)
    }

    fn unavailable(&self, url: &Url, source: HecUnavailable) -> SinkError {
        SinkError::Unavailable {
            sink: self.name.clone(),
            destination: display_url(url),
            source: Box::new(source),
        }
    }

    fn rejected(&self, url: &Url, reason: String) -> SinkError {
        SinkError::Rejected {
            sink: self.name.clone(),
            destination: display_url(url),
            reason,
        }
    }

    /// A refusal, naming the event HEC pointed at when it did.
    fn rejection(&self, reply: &HecReply, batch: &[Event], first: usize, count: usize) -> String {
        let mut reason = reply.describe();
        if let Some(n) = reply.invalid_event_number {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if let Some(e) = batch.get(first.saturating_add(n)).filter(|_| n < count) {
                reason.push_str(&format!(
                    " (event {n} of {count} in the request: tenant {}, {} {} version {})",
                    e.tenant_name,
                    e.stream,
                    e.id,
                    e.version_time.to_rfc3339()
                ));
            }
        }
        reason
    }
}

impl Sink for SplunkHecSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn batch_limits(&self) -> BatchLimits {
        self.limits
    }

    /// A handle on this sink's per-tenant labels that stays valid after the sink moved into
    /// its worker: how a reload changes `[sink_overrides.NAME]` live.
    fn labels(&self) -> Option<HecLabels> {
        Some(self.labels.clone())
    }

    /// `GET /services/collector/health` with the token (an unknown or disabled token answers
    /// 400 code 21/22 there, sinks.md §1.5); with indexer ack on, also an empty ack query on
    /// the channel, which a token without `useACK` refuses with code 14 — found now rather
    /// than after the first batch.
    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        let url = &self.client.health_url;
        let raw = self
            .client
            .health()
            .await
            .map_err(|e| self.unavailable(url, e))?;
        let reply = HecReply::parse(raw.status, &raw.body);
        match reply.decision() {
            Decision::Accepted => {}
            Decision::Retry => {
                return Err(self.unavailable(url, HecUnavailable::Busy(reply.describe())))
            }
            Decision::Reject => return Err(self.rejected(url, reply.describe())),
        }
        if self.ack.is_some() {
            let url = &self.client.ack_url;
            // Best effort: only "ack is disabled" is conclusive; anything else is left for
            // `send` to find.
            match self.client.post(url, br#"{"acks":[]}"#.to_vec()).await {
                Ok(raw) => {
                    let reply = HecReply::parse(raw.status, &raw.body);
                    if reply.code == Some(14) {
                        return Err(self.rejected(url, reply.describe()));
                    }
                    debug!(sink = %self.name, reply = %reply.describe(), "ack probe answered");
                }
                Err(e) => debug!(
                    sink = %self.name,
                    error = %super::error_chain(&e),
                    "ack probe failed"
                ),
            }
        }
        debug!(sink = %self.name, "healthcheck passed");
        Ok(())
    }

    /// POSTs the batch (one request per `max_bytes`); without indexer ack it is delivered
    /// when every request got a 200. With indexer ack the receipt is pending on the
    /// requests' ack ids, which the sink's ack tracker asks for together with every other
    /// batch's.
    async fn submit(&mut self, batch: &[Event]) -> Result<Receipt, SinkError> {
        if batch.is_empty() {
            return Ok(Receipt::Delivered);
        }
        let requests = {
            // Held only while encoding (no await): a reload waits at most one encode.
            let labels = self
                .labels
                .inner
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            encode_requests(
                batch,
                |e| {
                    labels
                        .tenants
                        .get(&e.tenant_name)
                        .unwrap_or(&labels.options)
                },
                self.limits.max_bytes,
            )
        };
        let total = requests.len();
        let url = &self.client.event_url;
        // The ack deadline runs from the first request: Splunk's "resend what is not
        // acknowledged within the timeout".
        let started = Instant::now();
        let mut ack_ids = Vec::new();
        for req in requests {
            let count = req.events.len();
            let raw = self
                .client
                .post(url, req.body)
                .await
                .map_err(|e| self.unavailable(url, e))?;
            let reply = HecReply::parse(raw.status, &raw.body);
            match reply.decision() {
                Decision::Accepted => {}
                Decision::Retry => {
                    return Err(self.unavailable(url, HecUnavailable::Busy(reply.describe())))
                }
                Decision::Reject => {
                    let reason = self.rejection(&reply, batch, req.events.start, count);
                    return Err(self.rejected(url, reason));
                }
            }
            if self.ack.is_some() {
                match reply.ack_id {
                    Some(id) => ack_ids.push(id),
                    // A 200 without ackId: the token has no useACK. Counting it delivered
                    // would silently drop the guarantee the operator asked for.
                    None => {
                        return Err(self.rejected(
                            url,
                            format!("{} without an ackId: {ACK_DISABLED_HINT}", reply.describe()),
                        ))
                    }
                }
            }
        }
        let Some((tracker, timeout)) = &self.ack else {
            debug!(sink = %self.name, events = batch.len(), requests = total, "batch delivered");
            return Ok(Receipt::Delivered);
        };
        let deadline = started + *timeout;
        let waits: Vec<_> = ack_ids
            .iter()
            .map(|id| tracker.register(&self.client, *id, deadline))
            .collect();
        debug!(sink = %self.name, events = batch.len(), requests = total, ?ack_ids, "batch accepted; awaiting indexer acks");
        let sink = self.name.clone();
        let destination = display_url(&self.client.ack_url);
        let timeout = *timeout;
        Ok(Receipt::Pending(Acknowledgement::new(async move {
            let mut left = waits.len();
            for wait in waits {
                let failure = match wait.await {
                    Ok(Ok(())) => {
                        left -= 1;
                        continue;
                    }
                    Ok(Err(f)) => f,
                    Err(_) => AckFailure::Closed,
                };
                let unavailable = |source: HecUnavailable| SinkError::Unavailable {
                    sink: sink.clone(),
                    destination: destination.clone(),
                    source: Box::new(source),
                };
                return Err(match failure {
                    AckFailure::Timeout => unavailable(HecUnavailable::AckTimeout {
                        pending: left,
                        total,
                        timeout,
                    }),
                    AckFailure::Overtaken(waited) => SinkError::Lost {
                        sink: sink.clone(),
                        destination: destination.clone(),
                        source: Box::new(HecUnavailable::AckOvertaken { waited }),
                    },
                    AckFailure::Reset => SinkError::Lost {
                        sink: sink.clone(),
                        destination: destination.clone(),
                        source: Box::new(HecUnavailable::AckReset),
                    },
                    AckFailure::Closed => unavailable(HecUnavailable::Busy(
                        "the sink shut down before the indexers acknowledged the batch".into(),
                    )),
                    AckFailure::Rejected(reply) => SinkError::Rejected {
                        sink: sink.clone(),
                        destination: destination.clone(),
                        reason: reply.describe(),
                    },
                });
            }
            Ok(())
        })))
    }

    /// Nothing is buffered inside the sink; outstanding indexer acks are abandoned (their
    /// batches are still in the outbox and are sent again after a restart) and idle
    /// connections close when the sink drops.
    async fn shutdown(&mut self) -> Result<(), SinkError> {
        if let Some((tracker, _)) = &self.ack {
            tracker.close();
        }
        debug!(sink = %self.name, "splunk hec sink shut down");
        Ok(())
    }
}
