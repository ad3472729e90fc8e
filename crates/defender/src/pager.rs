//! Paging one time window of one feed to its end, without ever silently dropping an
//! item.
//!
//! A window `from <= t < to` is read as a list of sub-windows with tick-aligned bounds.
//! Each sub-window is paged with `@odata.nextLink` when the API gives one, else with
//! `$skip` while pages come back full — but never beyond the feed's `max_skip` (Graph
//! answers 400 past 500; XDR's newest-first `$skip` paging shifts when an item is
//! updated mid-sweep). Past that the sub-window is split by time:
//!
//! * ascending order (Graph, `$orderby=lastUpdateDateTime asc`): every item older than
//!   the page's newest instant has been seen, so the next sub-window starts *at* that
//!   instant (`ge`, ties read again and dropped by the caller's dedup);
//! * newest first (XDR): every item newer than the page's oldest instant has been seen,
//!   so the next sub-window ends just *after* that instant;
//! * unknown order (MDE), or a page not in the order the feed promises: bisect.
//!
//! When the split cannot move (the page is all one instant), that instant alone is paged
//! with `$skip`, the last page overlapping so as to reach `max_skip + top` items (1,500
//! on Graph alerts, 550 on Graph incidents); when that last page is still full, whether
//! more follow cannot be known, and the pager fails with [`DefenderError::Paging`]
//! instead of returning a possibly shortened window.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use relay_config::Feed;
use serde_json::value::RawValue;
use tracing::{debug, warn, Instrument};
use url::Url;

use crate::admission::{HeldSlot, RequestClass};
use crate::client::{endpoint_of, DefenderClient, TenantTarget};
use crate::error::DefenderError;
use crate::odata_time::{ceil_tick, floor_tick, window_filter, TICK};
use crate::parse::{ItemFields, Page};
use crate::ratelimit::ThrottleCounter;

/// One version of one incident or alert, ready for normalization; nothing sink-specific.
#[derive(Debug, Clone)]
pub struct Item {
    /// The tenant's Entra id.
    pub tenant_id: String,
    /// The tenant's configured name.
    pub tenant: String,
    /// The feed it came from.
    pub feed: Feed,
    /// The item's id (XDR's numeric `incidentId` in decimal).
    pub id: String,
    /// The feed's last-update time, full precision.
    pub last_update: DateTime<Utc>,
    /// Its severity and title candidates, read while the page was parsed.
    pub fields: ItemFields,
    /// The item exactly as the API sent it, every field kept.
    pub raw: Box<RawValue>,
}

/// What a pager did so far; for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagerStats {
    /// Pages fetched successfully.
    pub pages: u64,
    /// Items returned to the caller.
    pub items: u64,
    /// Items the API returned that lie outside `[from, to)` (the printed window is
    /// widened to whole ticks, and an item may be updated between filter and
    /// serialization); they belong to another window.
    pub outside_window: u64,
    /// `@odata.nextLink`s followed.
    pub links_followed: u64,
    /// Times a sub-window was split by time.
    pub splits: u64,
    /// The largest `$skip` sent.
    pub max_skip_sent: u32,
    /// 429 answers received, including those retried before a page came back.
    pub throttled: u64,
}

/// The API's order of items within a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Oldest last-update first (we ask for it).
    Ascending,
    /// Newest first (the API's documented default).
    Descending,
    /// Not documented.
    Unknown,
}

fn order_of(feed: Feed) -> Order {
    match feed {
        Feed::GraphIncidents | Feed::GraphAlerts => Order::Ascending,
        Feed::M365dIncidents => Order::Descending,
        Feed::MdeAlerts => Order::Unknown,
    }
}

/// `lo <= t < hi`, both tick-aligned, `lo < hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SubWindow {
    lo: DateTime<Utc>,
    hi: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Cursor {
    sub: SubWindow,
    /// `$skip` of the next request built from `sub`.
    skip: u32,
    /// An `@odata.nextLink` to GET instead of building a request.
    link: Option<Url>,
}

impl Cursor {
    fn start(sub: SubWindow) -> Cursor {
        Cursor {
            sub,
            skip: 0,
            link: None,
        }
    }
}

/// Pages through one window; see the module docs. Obtained from
/// [`DefenderClient::window`].
#[derive(Debug)]
pub struct WindowPager {
    client: DefenderClient,
    tenant: TenantTarget,
    feed: Feed,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    cursor: Option<Cursor>,
    /// Sub-windows still to read, the next on top.
    pending: Vec<SubWindow>,
    stats: PagerStats,
    /// Where 429s are also counted, beyond this pager's own stats.
    throttling: Option<Arc<ThrottleCounter>>,
    /// The admission class of the window's first request.
    class: RequestClass,
    /// The slot of the page last returned: its items are in memory until the caller asks
    /// for the next page (or drops the pager).
    held: Option<HeldSlot>,
    span: tracing::Span,
}

impl WindowPager {
    pub(crate) fn new(
        client: DefenderClient,
        tenant: TenantTarget,
        feed: Feed,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> WindowPager {
        // Debug level: the caller's span already names tenant and feed, and at INFO every
        // poll of every tenant would format its window bounds into a JSON span (measured:
        // 3 % of the daemon's CPU at 10,000 tenants) for lines that are not logged.
        let span = tracing::debug_span!("defender_window", tenant = %tenant.name, feed = %feed,
            from = %from.to_rfc3339(), to = %to.to_rfc3339());
        let cursor = (from < to).then(|| {
            Cursor::start(SubWindow {
                lo: floor_tick(from),
                hi: ceil_tick(to),
            })
        });
        WindowPager {
            client,
            tenant,
            feed,
            from,
            to,
            cursor,
            pending: Vec::new(),
            stats: PagerStats::default(),
            throttling: None,
            class: RequestClass::Live,
            held: None,
            span,
        }
    }

    /// Also counts every 429 this pager receives (and the wait it imposed) in `counter`,
    /// as it arrives: a poll that is cancelled or fails after being throttled still shows
    /// in it.
    pub fn count_throttling(mut self, counter: Arc<ThrottleCounter>) -> WindowPager {
        self.throttling = Some(counter);
        self
    }

    /// Sends every request of this window in `class` (e.g. [`RequestClass::Background`]
    /// for a reconciliation pass) instead of live-then-continuation.
    pub fn with_class(mut self, class: RequestClass) -> WindowPager {
        self.class = class;
        self
    }

    /// The next batch of items, `None` once the window is exhausted. The batch keeps an
    /// admission slot until the next call (or until the pager is dropped), so commit its
    /// items before asking for more; the call that answers `None` frees it. Items may repeat
    /// across batches (ties at split points); the caller dedups on (id, last update).
    /// After an error the pager keeps its place: calling again retries that page.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Item>>, DefenderError> {
        let span = self.span.clone();
        self.next_page_inner().instrument(span).await
    }

    /// What the pager did so far.
    pub fn stats(&self) -> PagerStats {
        self.stats
    }

    /// The feed being read.
    pub fn feed(&self) -> Feed {
        self.feed
    }

    async fn next_page_inner(&mut self) -> Result<Option<Vec<Item>>, DefenderError> {
        loop {
            let Some(cursor) = self.cursor.clone() else {
                // The window is done: nothing of it is held any more, so neither is its
                // slot (the caller may still be committing the window's end).
                self.held = None;
                return Ok(None);
            };
            let url = match &cursor.link {
                Some(link) => link.clone(),
                None => self.list_url(&cursor),
            };
            // The first request of a window is what finds a new alert; the rest is backlog.
            let class = match self.class {
                RequestClass::Live if self.stats.pages > 0 => RequestClass::Continuation,
                class => class,
            };
            let (stats, throttling) = (&mut self.stats, &self.throttling);
            let mut on_throttled = |wait| {
                stats.throttled += 1;
                if let Some(counter) = throttling {
                    counter.record(wait);
                }
            };
            // The previous page's slot goes before the next request asks for one: a poll
            // holds at most one, so polls cannot deadlock waiting for each other's.
            self.held = None;
            let (page, slot) = self
                .client
                .fetch_page(&self.tenant, self.feed, &url, class, &mut on_throttled)
                .await?;
            self.held = Some(slot);
            let step = self.advance(&cursor, &url, &page)?;
            self.stats.pages += 1;
            if cursor.link.is_none() {
                self.stats.max_skip_sent = self.stats.max_skip_sent.max(cursor.skip);
            } else {
                self.stats.links_followed += 1;
            }
            if step.split {
                self.stats.splits += 1;
            }
            self.pending.extend(step.push);
            self.cursor = step.next.or_else(|| self.pending.pop().map(Cursor::start));
            let items = self.keep_in_window(page);
            if !items.is_empty() {
                self.stats.items += items.len() as u64;
                return Ok(Some(items));
            }
        }
    }

    fn keep_in_window(&mut self, page: Page) -> Vec<Item> {
        let mut items = Vec::with_capacity(page.items.len());
        for it in page.items {
            if it.last_update < self.from || it.last_update >= self.to {
                self.stats.outside_window += 1;
                continue;
            }
            items.push(Item {
                tenant_id: self.tenant.tenant_id.clone(),
                tenant: self.tenant.name.clone(),
                feed: self.feed,
                id: it.id,
                last_update: it.last_update,
                fields: it.fields,
                raw: it.raw,
            });
        }
        items
    }

    fn base(&self) -> &Url {
        self.tenant.endpoints.base_for(self.feed)
    }

    fn list_url(&self, cursor: &Cursor) -> Url {
        let paging = self.client.options().paging(self.feed);
        list_url(self.base(), self.feed, cursor.sub, paging.top, cursor.skip)
    }

    fn paging_error(&self, url: &Url, detail: String) -> DefenderError {
        DefenderError::Paging {
            tenant: self.tenant.name.clone(),
            endpoint: endpoint_of(url),
            detail,
        }
    }

    /// Where to go after `page`, fetched for `cursor` from `url`.
    fn advance(&self, cursor: &Cursor, url: &Url, page: &Page) -> Result<Step, DefenderError> {
        let paging = self.client.options().paging(self.feed);
        let mut link_refused = false;
        if let Some(link) = &page.next_link {
            match self.check_link(link, url, paging.max_skip) {
                Ok(Some(next)) => {
                    return Ok(Step::next(Cursor {
                        sub: cursor.sub,
                        skip: cursor.skip,
                        link: Some(next),
                    }))
                }
                Ok(None) => link_refused = true,
                Err(detail) => return Err(self.paging_error(url, detail)),
            }
        }
        let full = link_refused || page.items.len() >= paging.top as usize;
        if !full {
            return Ok(Step::done());
        }
        // Inside a nextLink chain our own `$skip` means nothing; continue by time.
        if cursor.link.is_none() && !link_refused {
            let next = cursor.skip.saturating_add(paging.top);
            if next <= paging.max_skip {
                return Ok(Step::next(Cursor {
                    sub: cursor.sub,
                    skip: next,
                    link: None,
                }));
            }
            // A single instant cannot be split: reach as deep as `$skip` allows, with
            // pages overlapping (the caller drops the repeats).
            let instant = cursor.sub.hi - cursor.sub.lo <= TICK;
            if instant && cursor.skip < paging.max_skip {
                return Ok(Step::next(Cursor {
                    sub: cursor.sub,
                    skip: paging.max_skip,
                    link: None,
                }));
            }
        }
        self.split(cursor, url, page)
    }

    /// The sub-window's pages were full up to the `$skip` ceiling: continue by time.
    fn split(&self, cursor: &Cursor, url: &Url, page: &Page) -> Result<Step, DefenderError> {
        let SubWindow { lo, hi } = cursor.sub;
        if hi - lo <= TICK {
            return Err(self.paging_error(
                url,
                format!(
                    "more than {} items share the last-update instant {}; $skip may not exceed {}",
                    cursor.skip as usize + page.items.len(),
                    lo.to_rfc3339(),
                    self.client.options().paging(self.feed).max_skip,
                ),
            ));
        }
        let times: Vec<DateTime<Utc>> = page
            .items
            .iter()
            .map(|i| i.last_update)
            .filter(|t| lo <= *t && *t < hi)
            .collect();
        let (Some(min), Some(max)) = (times.iter().min().copied(), times.iter().max().copied())
        else {
            return Err(self.paging_error(
                url,
                "a full page held no item of the requested window".into(),
            ));
        };
        let order = order_of(self.feed);
        let sorted = match order {
            Order::Ascending => times.windows(2).all(|w| w[0] <= w[1]),
            Order::Descending => times.windows(2).all(|w| w[0] >= w[1]),
            Order::Unknown => false,
        };
        if order != Order::Unknown && !sorted {
            warn!(url = %endpoint_of(url), "page not in the feed's documented order; bisecting the window");
        }
        let step = match (order, sorted) {
            (Order::Ascending, true) => {
                let at = floor_tick(max);
                if at > lo {
                    Step::split(SubWindow { lo: at, hi }, None)
                } else {
                    // The whole page is the window's first instant: page it alone.
                    Step::split(
                        SubWindow { lo, hi: lo + TICK },
                        Some(SubWindow { lo: lo + TICK, hi }),
                    )
                }
            }
            (Order::Descending, true) => {
                let at = floor_tick(min);
                if at + TICK < hi {
                    Step::split(SubWindow { lo, hi: at + TICK }, None)
                } else {
                    // The whole page is the window's last instant: page it alone.
                    Step::split(
                        SubWindow { lo: at, hi },
                        (lo < at).then_some(SubWindow { lo, hi: at }),
                    )
                }
            }
            _ => {
                let mid = floor_tick(lo + (hi - lo) / 2);
                Step::split(SubWindow { lo, hi: mid }, Some(SubWindow { lo: mid, hi }))
            }
        };
        debug!(url = %endpoint_of(url), next = ?step.next.as_ref().map(|c| c.sub), later = ?step.push,
            "splitting the window by time");
        Ok(step)
    }

    /// `Ok(Some)` to follow `link`; `Ok(None)` to continue by time instead (its `$skip` is
    /// past the ceiling); `Err` when following it would leak the token or loop.
    fn check_link(&self, link: &str, current: &Url, max_skip: u32) -> Result<Option<Url>, String> {
        let next = current
            .join(link)
            .map_err(|e| format!("unusable @odata.nextLink ({e})"))?;
        let base = self.base();
        if next.scheme() != base.scheme()
            || next.host_str() != base.host_str()
            || next.port_or_known_default() != base.port_or_known_default()
        {
            return Err(format!(
                "@odata.nextLink points to another host ({}); not sending the token there",
                endpoint_of(&next)
            ));
        }
        if &next == current {
            return Err("@odata.nextLink repeats the current page".into());
        }
        let deep_skip = next.query_pairs().any(|(k, v)| {
            k.eq_ignore_ascii_case("$skip")
                && v.parse::<u64>().map_or(true, |s| s > u64::from(max_skip))
        });
        if deep_skip {
            debug!(url = %endpoint_of(&next), "@odata.nextLink skips past the ceiling; splitting by time instead");
            return Ok(None);
        }
        Ok(Some(next))
    }
}

/// The pager's next move.
#[derive(Debug)]
struct Step {
    /// The next request, or `None` when this sub-window is done.
    next: Option<Cursor>,
    /// Sub-windows to read after it.
    push: Option<SubWindow>,
    split: bool,
}

impl Step {
    fn next(cursor: Cursor) -> Step {
        Step {
            next: Some(cursor),
            push: None,
            split: false,
        }
    }
    fn done() -> Step {
        Step {
            next: None,
            push: None,
            split: false,
        }
    }
    fn split(now: SubWindow, later: Option<SubWindow>) -> Step {
        Step {
            next: Some(Cursor::start(now)),
            push: later,
            split: true,
        }
    }
}

/// The list request for one sub-window of `feed`.
fn list_url(base: &Url, feed: Feed, sub: SubWindow, top: u32, skip: u32) -> Url {
    use std::fmt::Write;
    let path = match feed {
        Feed::M365dIncidents => "api/incidents",
        Feed::MdeAlerts => "api/alerts",
        Feed::GraphIncidents => "v1.0/security/incidents",
        Feed::GraphAlerts => "v1.0/security/alerts_v2",
    };
    let mut query = String::with_capacity(200);
    query.push_str("$filter=");
    encode_into(
        &mut query,
        &window_filter(feed.time_field(), sub.lo, sub.hi),
    );
    let _ = write!(query, "&$top={top}");
    if skip > 0 {
        let _ = write!(query, "&$skip={skip}");
    }
    match feed {
        Feed::M365dIncidents => {}
        Feed::MdeAlerts => query.push_str("&$expand=evidence"),
        Feed::GraphIncidents => {
            query.push_str("&$expand=alerts&$orderby=");
            encode_into(&mut query, "lastUpdateDateTime asc");
        }
        Feed::GraphAlerts => {
            query.push_str("&$orderby=");
            encode_into(&mut query, "lastUpdateDateTime asc");
        }
    }
    // Written out whole and parsed once where the base allows (no query or fragment of
    // its own): `set_path` and `set_query` each re-serialize and re-parse the URL, at
    // hundreds of requests a second.
    if base.query().is_none() && base.fragment().is_none() {
        let whole = format!("{}/{path}?{query}", base.as_str().trim_end_matches('/'));
        if let Ok(url) = Url::parse(&whole) {
            return url;
        }
    }
    let mut url = base.clone();
    url.set_path(&format!("{}/{path}", base.path().trim_end_matches('/')));
    url.set_query(Some(&query));
    url
}

/// Percent-encodes a query value; `%20` for spaces, which every OData server decodes
/// (a `+` is only a space to form decoders).
#[cfg(test)]
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 16);
    encode_into(&mut out, value);
    out
}

/// Appends `value` percent-encoded (see `encode`).
fn encode_into(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::odata_time::parse_timestamp;
    use relay_config::Endpoints;

    fn t(s: &str) -> DateTime<Utc> {
        parse_timestamp(s).unwrap()
    }

    #[test]
    fn list_urls_per_feed() {
        let base = Url::parse("https://api.example/").unwrap();
        let sub = SubWindow {
            lo: t("2024-01-01T00:00:00Z"),
            hi: t("2024-01-01T01:00:00.5Z"),
        };
        let f = "ge%202024-01-01T00:00:00.0000000Z%20and%20";
        assert_eq!(
            list_url(&base, Feed::M365dIncidents, sub, 100, 0).as_str(),
            format!("https://api.example/api/incidents?$filter=lastUpdateTime%20{f}lastUpdateTime%20lt%202024-01-01T01:00:00.5000000Z&$top=100")
        );
        assert_eq!(
            list_url(&base, Feed::MdeAlerts, sub, 10000, 20000).as_str(),
            format!("https://api.example/api/alerts?$filter=lastUpdateTime%20{f}lastUpdateTime%20lt%202024-01-01T01:00:00.5000000Z&$top=10000&$skip=20000&$expand=evidence")
        );
        assert_eq!(
            list_url(&base, Feed::GraphIncidents, sub, 50, 450).as_str(),
            format!("https://api.example/v1.0/security/incidents?$filter=lastUpdateDateTime%20{f}lastUpdateDateTime%20lt%202024-01-01T01:00:00.5000000Z&$top=50&$skip=450&$expand=alerts&$orderby=lastUpdateDateTime%20asc")
        );
        assert_eq!(
            list_url(&base, Feed::GraphAlerts, sub, 1000, 0).as_str(),
            format!("https://api.example/v1.0/security/alerts_v2?$filter=lastUpdateDateTime%20{f}lastUpdateDateTime%20lt%202024-01-01T01:00:00.5000000Z&$top=1000&$orderby=lastUpdateDateTime%20asc")
        );
    }

    #[test]
    fn list_url_keeps_a_base_path() {
        let base = Url::parse("http://127.0.0.1:9/prefix").unwrap();
        let sub = SubWindow {
            lo: t("2024-01-01T00:00:00Z"),
            hi: t("2024-01-02T00:00:00Z"),
        };
        let url = list_url(&base, Feed::GraphAlerts, sub, 10, 0);
        assert_eq!(url.path(), "/prefix/v1.0/security/alerts_v2");
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        assert_eq!(pairs[0], ("$filter".into(),
            "lastUpdateDateTime ge 2024-01-01T00:00:00.0000000Z and lastUpdateDateTime lt 2024-01-02T00:00:00.0000000Z".into()));
    }

    #[test]
    fn encode_escapes_what_must_be() {
        assert_eq!(encode("a b&c=d+e/f'g"), "a%20b%26c%3Dd%2Be%2Ff%27g");
    }

    #[test]
    fn window_bounds_widen_to_ticks() {
        let client = test_client();
        let tenant = TenantTarget {
            name: "t".into(),
            tenant_id: "00000000-0000-0000-0000-000000000001".into(),
            endpoints: Endpoints::single_host(&Url::parse("http://127.0.0.1:9/").unwrap()),
        };
        let from = t("2024-01-01T00:00:00.123456789Z");
        let to = t("2024-01-01T00:00:01.000000001Z");
        let pager = client.window(&tenant, Feed::GraphAlerts, from, to);
        let sub = pager.cursor.as_ref().unwrap().sub;
        assert_eq!(sub.lo, t("2024-01-01T00:00:00.1234567Z"));
        assert_eq!(sub.hi, t("2024-01-01T00:00:01.0000001Z"));
        assert!(client
            .window(&tenant, Feed::GraphAlerts, to, to)
            .cursor
            .is_none());
        assert!(client
            .window(&tenant, Feed::GraphAlerts, to, from)
            .cursor
            .is_none());
    }

    fn test_client() -> DefenderClient {
        struct NoTokens;
        #[async_trait::async_trait]
        impl crate::TokenProvider for NoTokens {
            async fn bearer(
                &self,
                _: &str,
                _: relay_config::Audience,
            ) -> Result<crate::AccessToken, crate::TokenError> {
                Err(crate::TokenError::Rejected("no tokens in this test".into()))
            }
            fn invalidate(&self, _: &str, _: relay_config::Audience, _: &crate::AccessToken) {}
        }
        DefenderClient::new(
            reqwest::Client::new(),
            std::sync::Arc::new(NoTokens),
            Default::default(),
        )
    }
}
