//! `?watch=true`: newline-delimited JSON `WatchEvent`s streamed from the watch cache.
//!
//! A watch's response body *is* its stream of events: the connection's task pulls the
//! next line when it can write, straight from the watch cache's bounded per-subscriber
//! channel (no task of its own per watch, so a change fanned out to a thousand watchers
//! wakes a thousand connection tasks, not twice that). A client that stops reading fills
//! only its own channel; the cache then cuts it off, which ends that response: other
//! watchers and writers never wait for it. The client re-watches from the last
//! resourceVersion it saw, as client-go does. Event lines for cached objects are built
//! once per change and shared by all its watchers ([`CachedEvent::line`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use skiff_api::status::{self as st, StatusError};
use skiff_api::table;
use skiff_store::StoreError;

use crate::api::{list_objects, AppState, Ctx, ListAt, ListItem, Selectors, Target};
use crate::cache::{CacheWatchStream, CachedEvent};
use crate::util;

/// How often a watch that allows bookmarks gets one (upstream: about once a minute; more
/// often here so clients' resume points stay fresh).
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

struct Encoder {
    kind: &'static str,
    api_version: String,
    table: Option<table::IncludeObject>,
    sent_columns: bool,
}

impl Encoder {
    fn event(&mut self, ty: &str, obj: &Value) -> Bytes {
        let object = match self.table {
            Some(include) if ty != "ERROR" && ty != "BOOKMARK" => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let mut t = table::table(
                    self.kind,
                    std::slice::from_ref(obj),
                    rv,
                    include,
                    util::now_unix(),
                );
                // Upstream sends the column definitions with the first event only.
                if self.sent_columns {
                    t["columnDefinitions"] = json!([]);
                }
                self.sent_columns = true;
                t
            }
            _ => obj.clone(),
        };
        let mut line =
            serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    /// An event for an object already encoded as JSON (a listed item): its bytes are
    /// copied into the line as they are, unless the watch wants Tables.
    fn encoded_event(&mut self, ty: &str, item: ListItem) -> Bytes {
        if self.table.is_some() {
            return self.event(ty, &item.into_value());
        }
        event_line(ty, item.json())
    }

    fn bookmark(&mut self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.kind, "apiVersion": self.api_version, "metadata": meta});
        self.event("BOOKMARK", &obj)
    }

    fn error(&mut self, e: StatusError) -> Bytes {
        self.event("ERROR", &e.body)
    }
}

/// `{"type":"<ty>","object":<json>}\n`, the object's bytes copied as they are.
pub(crate) fn event_line(ty: &str, json: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(json.len() + ty.len() + 24);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(ty.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(json);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

fn parse_bool(ctx: &Ctx, k: &str) -> bool {
    matches!(ctx.q(k), "true" | "1")
}

pub(crate) async fn watch(
    state: &Arc<AppState>,
    t: &Target,
    ctx: &Ctx,
) -> Result<Response, StatusError> {
    let sel = Selectors::parse(t, ctx)?;
    let timeout = match ctx.q("timeoutSeconds") {
        // Upstream: random in [min-request-timeout, 2x), so that watches started together
        // do not all end together.
        "" => state
            .watch_timeout
            .mul_f64(1.0 + crate::pki::random_bytes(1)[0] as f64 / 256.0),
        s => Duration::from_secs(s.parse::<u64>().map_err(|_| {
            st::bad_request(format!(
                "timeoutSeconds: Invalid value: {s:?}: must be a non-negative integer"
            ))
        })?),
    };
    let bookmarks = parse_bool(ctx, "allowWatchBookmarks");
    let send_initial = parse_bool(ctx, "sendInitialEvents");
    let rv = ctx.q("resourceVersion").to_string();
    let rvm = ctx.q("resourceVersionMatch");
    if send_initial && rvm != "NotOlderThan" {
        // Upstream's validation of the watch-list feature.
        return Err(st::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            &[skiff_api::field::FieldError::forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden unless resourceVersionMatch is \"NotOlderThan\"",
            )],
        ));
    }
    if !send_initial && !rvm.is_empty() {
        return Err(st::bad_request(
            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let table = if ctx.wants_table() {
        Some(ctx.include_object()?)
    } else {
        None
    };
    let enc = Encoder {
        kind: t.r.kind,
        api_version: t.r.api_version(),
        table,
        sent_columns: false,
    };
    // Where the live stream starts, and which objects to replay first as ADDED. Upstream:
    // unset or "0" (and sendInitialEvents) replay the current state; any other version
    // streams what changed after it.
    let replay = send_initial || rv.is_empty() || rv == "0";
    let (initial, from) = if replay {
        // The initial state comes from the watch cache under LIST's rules (unset: a
        // consistent read; "0": whatever the cache has; N: not older than N).
        let at = match rv.as_str() {
            "" => ListAt::Latest,
            "0" => ListAt::Any,
            n => ListAt::NotOlderThan(
                n.parse()
                    .map_err(|_| st::bad_request(format!("invalid resource version {rv:?}")))?,
            ),
        };
        // Kept as listed (shared with the cache, or encoded) and written one by one.
        let page = list_objects(state, t, &sel, at, None, None).await?;
        (page.items, page.revision)
    } else {
        let n: u64 = rv.parse().map_err(|_| {
            st::bad_request(format!(
                "invalid resource version {rv:?}: resourceVersion must be an unsigned integer"
            ))
        })?;
        (Vec::new(), n)
    };

    let root = format!("/registry/{}/", t.r.plural);
    let stream = state.cache.watch(&root, &t.prefix(), from).await;
    let now = tokio::time::Instant::now();
    let w = Watch {
        enc,
        sel,
        initial: initial.into_iter(),
        initial_end: send_initial.then_some(from),
        opened: Some(stream),
        live: None,
        from,
        last: from,
        deadline: Box::pin(tokio::time::sleep_until(now + timeout)),
        tick: tokio::time::interval_at(now + BOOKMARK_EVERY, BOOKMARK_EVERY),
        bookmarks,
        done: false,
    };
    let body = futures::stream::unfold(w, |mut w| async move {
        let line = w.next_line().await?;
        Some((Ok::<_, std::convert::Infallible>(line), w))
    });
    let mut r = Response::new(Body::from_stream(body));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(r)
}

/// One watch response's state: the initial events, then the live stream, bookmarks and
/// the deadline.
struct Watch {
    enc: Encoder,
    sel: Selectors,
    initial: std::vec::IntoIter<ListItem>,
    /// `sendInitialEvents`: the bookmark that ends the initial events, at this revision.
    initial_end: Option<u64>,
    /// The cache's answer to the watch, until the initial events are sent.
    opened: Option<skiff_store::Result<CacheWatchStream>>,
    live: Option<CacheWatchStream>,
    from: u64,
    /// The revision of the last change seen (what bookmarks carry).
    last: u64,
    /// The watch's end, registered with the timer once (not again for every event).
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    tick: tokio::time::Interval,
    bookmarks: bool,
    done: bool,
}

enum Woken {
    Deadline,
    Tick,
    Event(Option<skiff_store::Result<std::sync::Arc<CachedEvent>>>),
}

impl Watch {
    /// The next line of the response; `None` ends it.
    async fn next_line(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(item) = self.initial.next() {
            return Some(self.enc.encoded_event("ADDED", item));
        }
        if let Some(rv) = self.initial_end.take() {
            return Some(self.enc.bookmark(rv, true));
        }
        if let Some(opened) = self.opened.take() {
            match opened {
                Ok(s) => self.live = Some(s),
                Err(StoreError::Compacted { .. }) => {
                    self.done = true;
                    return Some(self.enc.error(too_old(self.from)));
                }
                Err(e) => {
                    self.done = true;
                    return Some(self.enc.error(st::internal_error(&e.to_string())));
                }
            }
        }
        let bookmarks = self.bookmarks && self.enc.table.is_none();
        loop {
            let live = self.live.as_mut()?;
            let woken = tokio::select! {
                _ = self.deadline.as_mut() => Woken::Deadline,
                _ = self.tick.tick(), if bookmarks => Woken::Tick,
                ev = live.next() => Woken::Event(ev),
            };
            let ev = match woken {
                Woken::Deadline => {
                    // Upstream sends a last bookmark as the watch ends, so that the client
                    // resumes from the newest version instead of re-listing.
                    self.done = true;
                    return bookmarks.then(|| self.enc.bookmark(self.last, false));
                }
                Woken::Tick => return Some(self.enc.bookmark(self.last, false)),
                Woken::Event(None) => return None,
                Woken::Event(Some(Ok(ev))) => ev,
                Woken::Event(Some(Err(StoreError::Compacted { .. }))) => {
                    self.done = true;
                    return Some(self.enc.error(too_old(self.last)));
                }
                Woken::Event(Some(Err(e))) => {
                    // WatcherTooSlow and store failures end the stream; the client
                    // re-watches from the last version it saw.
                    tracing::debug!("watch on {} ended: {e}", self.enc.kind);
                    return None;
                }
            };
            self.last = ev.revision;
            if let Some(ty) = translate(&self.sel, &ev) {
                return Some(if self.enc.table.is_some() {
                    self.enc
                        .encoded_event(ty, ListItem::Cached(ev.object.clone()))
                } else {
                    ev.line(ty)
                });
            }
        }
    }
}

fn too_old(rv: u64) -> StatusError {
    st::expired(format!("too old resource version: {rv}"))
}

/// A change as a watch event type under selectors: an object that starts matching is
/// ADDED, one that stops matching is DELETED (with its new state), as upstream's watch
/// cache does. Selectors read the cached attributes; nothing is decoded.
fn translate(sel: &Selectors, ev: &CachedEvent) -> Option<&'static str> {
    if ev.deleted {
        return sel.matches_attrs(&ev.object.attrs).then_some("DELETED");
    }
    let cur_m = sel.matches_attrs(&ev.object.attrs);
    let prev_m = ev
        .before
        .as_ref()
        .is_some_and(|b| sel.matches_attrs(&b.attrs));
    match (prev_m, cur_m) {
        (false, true) => Some("ADDED"),
        (true, true) => Some("MODIFIED"),
        (true, false) => Some("DELETED"),
        (false, false) => None,
    }
}
