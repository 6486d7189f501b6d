//! core/v1 Events, written the way client-go's recorder does so `kubectl describe` and
//! `kubectl get events` show them: name `<object>.<unique hex>`, `involvedObject` with
//! uid and resourceVersion, `source.component`, `reportingComponent`; a repeat of the same
//! (object, type, reason, message) bumps `count` and `lastTimestamp` on the existing Event
//! instead of creating another (client-go's EventCorrelator deduplication).
//!
//! Publishing never waits for the API, as with client-go's `EventBroadcaster`: an Event
//! is queued and written by background writers, so a ReplicaSet that creates 500 pods
//! does not wait for 500 Event writes one after the other (that serial wait was most of a
//! 1000-replica Deployment's start-up time). As upstream:
//! - at most [`MAX_QUEUED`] Events wait (client-go's `maxQueuedEvents`); beyond that they
//!   are dropped (`DropIfChannelFull`);
//! - `EventSourceObjectSpamFilter`: per (source, involved object, type), a token bucket of
//!   [`SPAM_BURST`] Events refilled one per [`SPAM_REFILL`]; Events beyond it are dropped
//!   (a 1000-pod ReplicaSet gets 25 `SuccessfulCreate` Events, not 1000);
//! - `EventAggregator` (it runs first, as in client-go's `EventCorrelator`): Events about
//!   one object with the same source, type and reason but different messages are
//!   combined once [`AGGREGATE_MAX_EVENTS`] distinct messages arrived within
//!   [`AGGREGATE_INTERVAL`] of each other: from then on they all go to one Event whose
//!   message is the latest prefixed `(combined from similar events): ` and whose `count`
//!   grows, instead of one Event per message.
//!
//! Events about one object go to one writer, in order (a repeat's `count` bump follows
//! its create). Event writes are best effort: a failed write is logged, never fails a
//! reconcile.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams, PostParams},
    Api, Client, Resource, ResourceExt as _,
};
use tokio::sync::mpsc;

/// client-go's `maxQueuedEvents`.
pub const MAX_QUEUED: usize = 1000;
/// Concurrent Event writers (client-go writes with one; Events then trail far behind a
/// burst of pod creates on a busy API server).
const WRITERS: usize = 4;
/// client-go's `defaultSpamBurst`.
pub const SPAM_BURST: u32 = 25;
/// client-go's `defaultSpamQPS` (1/300): one token back every five minutes.
pub const SPAM_REFILL: Duration = Duration::from_secs(300);
/// client-go's `maxLruCacheEntries`: spam keys remembered at most.
const SPAM_KEYS: usize = 4096;
/// client-go's `defaultAggregateMaxEvents`: distinct messages before they are combined.
pub const AGGREGATE_MAX_EVENTS: usize = 10;
/// client-go's `defaultAggregateIntervalInSeconds`: a record idle this long starts over.
pub const AGGREGATE_INTERVAL: Duration = Duration::from_secs(600);
/// client-go's `EventAggregatorByReasonMessageFunc` prefix.
pub const COMBINED_PREFIX: &str = "(combined from similar events): ";
/// The dedup key's message part for a combined Event (no real message starts with a NUL),
/// so every combined Event of one aggregate lands on the same Event object.
const COMBINED_KEY: &str = "\0combined";

/// `Normal` or `Warning`, upstream's two Event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// (uid or ns/name, type, reason, message): what makes two Events "the same".
type EventKey = (String, EventType, String, String);
/// The Event written for a key: (namespace, name, count).
type Written = HashMap<EventKey, (String, String, i32)>;

/// client-go's `EventSourceObjectSpamFilter`: a token bucket per spam key.
#[derive(Debug)]
pub struct SpamFilter {
    burst: u32,
    refill: Duration,
    /// Spam key → (tokens left, when they were counted).
    buckets: HashMap<String, (f64, Instant)>,
}

impl SpamFilter {
    pub fn new(burst: u32, refill: Duration) -> SpamFilter {
        SpamFilter {
            burst,
            refill,
            buckets: HashMap::new(),
        }
    }

    fn refilled(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(since).as_secs_f64() / self.refill.as_secs_f64();
        (tokens + gained).min(f64::from(self.burst))
    }

    /// Whether an Event with `key` may be written at `now` (takes a token if so).
    pub fn allow(&mut self, key: &str, now: Instant) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= SPAM_KEYS {
            // A full bucket behaves exactly like a forgotten one: drop those first.
            let (burst, refill) = (f64::from(self.burst), self.refill);
            self.buckets.retain(|_, (t, at)| {
                let gained =
                    now.saturating_duration_since(*at).as_secs_f64() / refill.as_secs_f64();
                *t + gained < burst
            });
            if self.buckets.len() >= SPAM_KEYS {
                return true; // upstream's LRU forgets the oldest key; never block on it
            }
        }
        let (tokens, at) = self
            .buckets
            .get(key)
            .copied()
            .unwrap_or((f64::from(self.burst), now));
        let tokens = self.refilled(tokens, at, now);
        if tokens < 1.0 {
            self.buckets.insert(key.to_string(), (tokens, now));
            return false;
        }
        self.buckets.insert(key.to_string(), (tokens - 1.0, now));
        true
    }
}

/// client-go's `EventAggregator`: per aggregate key (source, involved object, type,
/// reason), the distinct messages seen while the record was active.
#[derive(Debug)]
pub struct Aggregator {
    max_events: usize,
    interval: Duration,
    /// Aggregate key → (distinct messages, last Event).
    records: HashMap<String, (std::collections::HashSet<String>, Instant)>,
}

impl Aggregator {
    pub fn new(max_events: usize, interval: Duration) -> Aggregator {
        Aggregator {
            max_events,
            interval,
            records: HashMap::new(),
        }
    }

    /// Records an Event with `message` under `key` at `now`; returns the combined
    /// message when it is to be combined with its similar Events (the `max_events`th
    /// distinct message within the interval and every one after it).
    pub fn aggregate(&mut self, key: &str, message: &str, now: Instant) -> Option<String> {
        if !self.records.contains_key(key) && self.records.len() >= SPAM_KEYS {
            // Bounded like upstream's LRU: forget the idle records first.
            let interval = self.interval;
            self.records
                .retain(|_, (_, last)| now.saturating_duration_since(*last) <= interval);
        }
        let record = self
            .records
            .entry(key.to_string())
            .or_insert_with(|| (Default::default(), now));
        if now.saturating_duration_since(record.1) > self.interval {
            record.0.clear();
        }
        record.0.insert(message.to_string());
        record.1 = now;
        if record.0.len() < self.max_events {
            return None;
        }
        // Upstream keeps the set from growing past the threshold (`PopAny`).
        if let Some(any) = record.0.iter().next().cloned() {
            record.0.remove(&any);
        }
        Some(format!("{COMBINED_PREFIX}{message}"))
    }
}

/// upstream's `getEventKey` minus the message: what makes Events "similar".
fn aggregate_key(component: &str, o: &ObjectReference, ty: EventType, reason: &str) -> String {
    format!("{}/{reason}", spam_key(component, o, ty))
}

/// upstream's `getSpamKey`: source and involved object (kind, namespace, name, uid,
/// apiVersion) and the Event type.
fn spam_key(component: &str, o: &ObjectReference, ty: EventType) -> String {
    let f = |s: &Option<String>| s.clone().unwrap_or_default();
    [
        component.to_string(),
        f(&o.kind),
        f(&o.namespace),
        f(&o.name),
        f(&o.uid),
        f(&o.api_version),
        ty.as_str().to_string(),
    ]
    .join("/")
}

/// One queued Event.
struct Msg {
    involved: ObjectReference,
    /// The dedup key: its message part is the message, or [`COMBINED_KEY`].
    key: EventKey,
    message: String,
    at: Time,
}

/// What the writers share.
struct Writer {
    client: Client,
    component: String,
    seen: Mutex<Written>,
}

struct Inner {
    writer: Arc<Writer>,
    aggregator: Mutex<Aggregator>,
    spam: Mutex<SpamFilter>,
    /// One queue per writer, started with the first Event (a runtime exists by then).
    /// Dropping the Recorder closes them and the writers end.
    lanes: OnceLock<Vec<mpsc::Sender<Msg>>>,
}

#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

/// An `ObjectReference` to `obj` for `involvedObject`.
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: obj.meta().name.clone(),
        namespace: obj.meta().namespace.clone(),
        uid: obj.meta().uid.clone(),
        resource_version: obj.meta().resource_version.clone(),
        field_path: None,
    }
}

impl Recorder {
    pub fn new(client: Client, component: String) -> Recorder {
        Recorder {
            inner: Arc::new(Inner {
                writer: Arc::new(Writer {
                    client,
                    component,
                    seen: Mutex::new(HashMap::new()),
                }),
                aggregator: Mutex::new(Aggregator::new(AGGREGATE_MAX_EVENTS, AGGREGATE_INTERVAL)),
                spam: Mutex::new(SpamFilter::new(SPAM_BURST, SPAM_REFILL)),
                lanes: OnceLock::new(),
            }),
        }
    }

    /// Records an Event about `obj`: queued, written in the background (best effort).
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        ty: EventType,
        reason: &str,
        message: &str,
    ) {
        self.publish_ref(reference(obj), ty, reason, message).await
    }

    /// Records an Event about the object `involved` names (queued, see [`Self::publish`]).
    pub async fn publish_ref(
        &self,
        involved: ObjectReference,
        ty: EventType,
        reason: &str,
        message: &str,
    ) {
        let w = &self.inner.writer;
        let now = Instant::now();
        // Aggregation first, then the spam filter (client-go's EventCorrelate order).
        let combined = self
            .inner
            .aggregator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .aggregate(
                &aggregate_key(&w.component, &involved, ty, reason),
                message,
                now,
            );
        let spam = spam_key(&w.component, &involved, ty);
        let allowed = self
            .inner
            .spam
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(&spam, now);
        if !allowed {
            tracing::debug!("event {reason} ({message}) dropped: more than {SPAM_BURST} Events about {spam} (spam filter)");
            return;
        }
        let ident = involved.uid.clone().unwrap_or_else(|| {
            format!(
                "{}/{}",
                involved.namespace.clone().unwrap_or_default(),
                involved.name.clone().unwrap_or_default()
            )
        });
        let mut h = DefaultHasher::new();
        ident.hash(&mut h);
        let lanes = self.inner.lanes.get_or_init(|| {
            (0..WRITERS)
                .map(|_| {
                    let (tx, rx) = mpsc::channel(MAX_QUEUED / WRITERS);
                    tokio::spawn(write_loop(w.clone(), rx));
                    tx
                })
                .collect()
        });
        let lane = &lanes[(h.finish() % lanes.len() as u64) as usize];
        let (key_message, message) = match combined {
            Some(c) => (COMBINED_KEY.to_string(), c),
            None => (message.to_string(), message.to_string()),
        };
        let m = Msg {
            involved,
            key: (ident, ty, reason.to_string(), key_message),
            message,
            at: Time(Timestamp::now()),
        };
        if let Err(mpsc::error::TrySendError::Full(m)) = lane.try_send(m) {
            tracing::debug!(
                "event {} ({}) dropped: {MAX_QUEUED} Events already queued",
                m.key.2,
                m.key.3
            );
        }
    }
}

async fn write_loop(w: Arc<Writer>, mut rx: mpsc::Receiver<Msg>) {
    while let Some(m) = rx.recv().await {
        w.write(m).await;
    }
}

impl Writer {
    async fn write(&self, m: Msg) {
        let Msg {
            involved,
            key,
            message,
            at,
        } = m;
        let (_, ty, reason, _) = &key;
        let message = &message;
        let existing = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some((ns_, name, count)) = existing {
            // The message too: a combined Event shows the latest (client-go's patch).
            let patch = serde_json::json!({
                "count": count + 1,
                "lastTimestamp": at,
                "message": message,
            });
            let api: Api<Event> = Api::namespaced(self.client.clone(), &ns_);
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, (ns_, name, count + 1));
                    return;
                }
                // Expired or deleted: fall through and create a new one.
                Err(e) => {
                    tracing::debug!("event {name}: bumping count failed ({e}); creating anew")
                }
            }
        }
        // Cluster-scoped objects (Nodes) get their Events in `default`, as upstream.
        let ns = involved
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "{}.{:x}",
            involved.name.clone().unwrap_or_else(|| "object".into()),
            nanos
        );
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: involved,
            type_: Some(ty.as_str().into()),
            reason: Some(reason.clone()),
            message: Some(message.clone()),
            count: Some(1),
            first_timestamp: Some(at.clone()),
            last_timestamp: Some(at),
            event_time: None::<MicroTime>,
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        match api.create(&PostParams::default(), &ev).await {
            Ok(created) => {
                self.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, (ns, created.name_any(), 1));
            }
            Err(e) => tracing::warn!("could not record event {reason} ({message}): {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spam_filter_allows_a_burst_per_object_then_one_per_refill() {
        let mut f = SpamFilter::new(3, Duration::from_secs(300));
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(f.allow("rs/web/Normal", t0), "event {i} within the burst");
        }
        assert!(!f.allow("rs/web/Normal", t0), "the 4th is dropped");
        assert!(
            f.allow("rs/api/Normal", t0),
            "another object has its own bucket"
        );
        assert!(f.allow("rs/web/Warning", t0), "so has another type");
        assert!(!f.allow("rs/web/Normal", t0 + Duration::from_secs(299)));
        assert!(
            f.allow("rs/web/Normal", t0 + Duration::from_secs(301)),
            "one token back after the refill period"
        );
        assert!(!f.allow("rs/web/Normal", t0 + Duration::from_secs(302)));
        // A dropped Event does not take a token: after another period, one more passes.
        assert!(f.allow("rs/web/Normal", t0 + Duration::from_secs(610)));
    }

    #[test]
    fn similar_events_are_combined_from_the_tenth_distinct_message() {
        let mut a = Aggregator::new(AGGREGATE_MAX_EVENTS, AGGREGATE_INTERVAL);
        let t0 = Instant::now();
        let key = "c/Pod/default/web/u1/v1/Warning/FailedMount";
        for i in 0..9 {
            assert_eq!(a.aggregate(key, &format!("volume {i}"), t0), None, "{i}");
        }
        // A repeat is not a new distinct message.
        assert_eq!(a.aggregate(key, "volume 0", t0), None);
        assert_eq!(
            a.aggregate(key, "volume 9", t0).as_deref(),
            Some("(combined from similar events): volume 9")
        );
        assert_eq!(
            a.aggregate(key, "volume 10", t0).as_deref(),
            Some("(combined from similar events): volume 10"),
            "every similar Event after the threshold"
        );
        assert_eq!(
            a.aggregate("c/Pod/default/web/u1/v1/Warning/BackOff", "x", t0),
            None,
            "another reason is another aggregate"
        );
        // Active records stay combined; one idle past the interval starts over.
        let later = t0 + AGGREGATE_INTERVAL;
        assert!(a.aggregate(key, "volume 11", later).is_some());
        let idle = later + AGGREGATE_INTERVAL + Duration::from_secs(1);
        assert_eq!(a.aggregate(key, "volume 12", idle), None);
    }

    #[tokio::test]
    async fn publishing_never_waits_for_the_api() {
        // An API server that accepts connections and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((c, _)) = l.accept().await {
                held.push(c);
            }
        });
        let cfg = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let r = Recorder::new(Client::try_from(cfg).unwrap(), "test".into());
        let t = Instant::now();
        // More than the queue holds, each about another object (past the spam filter).
        for i in 0..MAX_QUEUED + 100 {
            let mut pod = k8s_openapi::api::core::v1::Pod::default();
            pod.metadata.name = Some(format!("p{i}"));
            pod.metadata.namespace = Some("default".into());
            pod.metadata.uid = Some(format!("uid-{i}"));
            r.publish(&pod, EventType::Normal, "Created", "created")
                .await;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "publishing waited for the API: {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn spam_keys_name_the_object_and_type() {
        let o = ObjectReference {
            kind: Some("ReplicaSet".into()),
            namespace: Some("default".into()),
            name: Some("web".into()),
            uid: Some("u1".into()),
            api_version: Some("apps/v1".into()),
            ..Default::default()
        };
        let a = spam_key("c", &o, EventType::Normal);
        assert_ne!(a, spam_key("c", &o, EventType::Warning));
        assert_ne!(a, spam_key("other", &o, EventType::Normal));
        let mut o2 = o.clone();
        o2.uid = Some("u2".into());
        assert_ne!(
            a,
            spam_key("c", &o2, EventType::Normal),
            "a recreated object"
        );
    }
}
