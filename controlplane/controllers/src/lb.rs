//! The LoadBalancer IP controller: `status.loadBalancer.ingress[].ip` for Services of type
//! LoadBalancer whose `loadBalancerClass` is unset or [`LB_CLASS`].
//!
//! With a pool (`--lb-pool`, CIDRs or `a.b.c.d-a.b.c.e` ranges) it works like MetalLB's
//! or kube-vip-cloud-provider's IPAM: an IP from the pool per Service, or the ones asked
//! for with the annotation [`IPS_ANNOTATION`] (comma list) or the deprecated
//! `spec.loadBalancerIP`, when inside the pool and free; otherwise the Service stays
//! pending with a Warning Event `AllocationFailed` saying why. Without a pool it publishes
//! the nodes' addresses, as k3s ServiceLB does (the agents serve the VIPs on every node).
//!
//! The allocations live only in the Services' statuses: every sync derives them from all
//! Services ([`allocate`], pure), so a restart loses nothing and needs no state of its
//! own. Two Services claiming one IP (statuses written by hand, or by two controllers):
//! the older one (creationTimestamp, then namespace/name) keeps it, the other is moved.
//! A Service whose type changes away from LoadBalancer gets its status cleared. Writes go
//! through `/status`. Syncs run one at a time, so two Services never race for one IP, and
//! any sync that would write or report a failure decides on a fresh list of Services (the
//! cache may still show a just-deleted Service holding its IP).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::core::v1::{Node, Service},
    jiff::Timestamp,
};
use kube::{
    api::{ListParams, Patch, PatchParams},
    runtime::{
        controller::{Action, Config as ControllerConfig},
        reflector::{ObjectRef, Store},
        watcher, Controller,
    },
    Api, ResourceExt as _,
};

use crate::{backoff::Backoff, cidr::Ipv4Range, events::EventType, Ctx};

/// The `loadBalancerClass` this controller serves (besides none).
pub const LB_CLASS: &str = "skiff.io/lb";
/// Requested IPs, comma-separated (like MetalLB's `metallb.io/loadBalancerIPs`).
pub const IPS_ANNOTATION: &str = "skiff.io/load-balancer-ips";

/// The addresses LoadBalancer IPs come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool {
    ranges: Vec<Ipv4Range>,
}

impl Pool {
    pub fn new(ranges: Vec<Ipv4Range>) -> Pool {
        Pool { ranges }
    }

    /// Parses `--lb-pool` values (each may itself be a comma list).
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Pool, String> {
        let mut ranges = Vec::new();
        for v in values {
            for part in v.as_ref().split(',').filter(|p| !p.trim().is_empty()) {
                ranges.push(
                    part.parse::<Ipv4Range>()
                        .map_err(|e| format!("--lb-pool: {e}"))?,
                );
            }
        }
        Ok(Pool { ranges })
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    pub fn size(&self) -> u64 {
        self.ranges.iter().map(Ipv4Range::len).sum()
    }

    fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges
            .iter()
            .flat_map(|r| (r.start..=r.end).map(Ipv4Addr::from))
    }
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.ranges.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// A Service's namespace and name.
pub type Key = (String, String);

/// What the allocator needs of one eligible Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub key: Key,
    pub created: Option<Timestamp>,
    /// Requested IPs (annotation, else spec.loadBalancerIP); an unparsable one is an error.
    pub requested: Result<Vec<Ipv4Addr>, String>,
    /// The IPv4 addresses its status shows now.
    pub current: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Assigned(Vec<Ipv4Addr>),
    /// Why no IP could be given.
    Pending(String),
}

fn key_str(k: &Key) -> String {
    format!("{}/{}", k.0, k.1)
}

/// Allocates pool IPs to every claim (see the module docs): current holdings are kept in
/// age order (a duplicate goes to the older Service), then the others are served in age
/// order, each with its requested IPs or the lowest free one.
pub fn allocate(pool: &Pool, claims: &[Claim]) -> BTreeMap<Key, Outcome> {
    let mut order: Vec<&Claim> = claims.iter().collect();
    order.sort_by(|a, b| (a.created, &a.key).cmp(&(b.created, &b.key)));
    let mut held: HashMap<Ipv4Addr, &Key> = HashMap::new();
    let mut out: BTreeMap<Key, Outcome> = BTreeMap::new();

    // 1. Keep what is held and still valid.
    for c in &order {
        match &c.requested {
            Ok(req) if !req.is_empty() => {
                let mut cur: Vec<Ipv4Addr> = c.current.clone();
                cur.sort();
                let mut want = req.clone();
                want.sort();
                want.dedup();
                if cur == want
                    && want
                        .iter()
                        .all(|ip| pool.contains(*ip) && !held.contains_key(ip))
                {
                    for ip in &want {
                        held.insert(*ip, &c.key);
                    }
                    out.insert(c.key.clone(), Outcome::Assigned(want));
                }
            }
            Ok(_) => {
                if let Some(ip) = c
                    .current
                    .iter()
                    .find(|ip| pool.contains(**ip) && !held.contains_key(ip))
                {
                    held.insert(*ip, &c.key);
                    out.insert(c.key.clone(), Outcome::Assigned(vec![*ip]));
                }
            }
            Err(_) => {}
        }
    }

    // 2. Serve the others.
    let mut free = pool.addresses();
    for c in &order {
        if out.contains_key(&c.key) {
            continue;
        }
        let outcome = match &c.requested {
            Err(e) => Outcome::Pending(e.clone()),
            Ok(req) if !req.is_empty() => {
                if let Some(ip) = req.iter().find(|ip| !pool.contains(**ip)) {
                    Outcome::Pending(format!(
                        "requested IP {ip} is not in the LoadBalancer pool ({pool})"
                    ))
                } else if let Some((ip, other)) =
                    req.iter().find_map(|ip| held.get(ip).map(|o| (ip, *o)))
                {
                    Outcome::Pending(format!(
                        "requested IP {ip} is already allocated to Service {}",
                        key_str(other)
                    ))
                } else {
                    let mut want = req.clone();
                    want.sort();
                    want.dedup();
                    for ip in &want {
                        held.insert(*ip, &c.key);
                    }
                    Outcome::Assigned(want)
                }
            }
            Ok(_) => match free.by_ref().find(|ip| !held.contains_key(ip)) {
                Some(ip) => {
                    held.insert(ip, &c.key);
                    Outcome::Assigned(vec![ip])
                }
                None => Outcome::Pending(format!(
                    "no free IP in the LoadBalancer pool {pool}: all {} addresses are allocated",
                    pool.size()
                )),
            },
        };
        out.insert(c.key.clone(), outcome);
    }
    out
}

/// Whether this controller gives `svc` its LoadBalancer addresses.
pub fn eligible(svc: &Service) -> bool {
    let Some(spec) = svc.spec.as_ref() else {
        return false;
    };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec
            .load_balancer_class
            .as_deref()
            .is_none_or(|c| c == LB_CLASS)
}

/// The IPs `svc` asks for: the annotation, else `spec.loadBalancerIP`.
pub fn requested(svc: &Service) -> Result<Vec<Ipv4Addr>, String> {
    let (what, list) = match svc.annotations().get(IPS_ANNOTATION) {
        Some(a) => (format!("annotation {IPS_ANNOTATION}"), a.clone()),
        None => (
            "spec.loadBalancerIP".to_string(),
            svc.spec
                .as_ref()
                .and_then(|s| s.load_balancer_ip.clone())
                .unwrap_or_default(),
        ),
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<Ipv4Addr>()
                .map_err(|_| format!("{what}: {s:?} is not an IPv4 address"))
        })
        .collect()
}

/// The IPs `svc`'s status shows.
pub fn status_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

/// The addresses published without a pool: each node's InternalIP and ExternalIP (IPv4),
/// skipping nodes whose Ready condition says they are not ready.
pub fn node_addresses(nodes: &[Arc<Node>]) -> Vec<Ipv4Addr> {
    let mut out = BTreeSet::new();
    for n in nodes {
        let status = n.status.as_ref();
        let not_ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status != "True");
        if not_ready {
            continue;
        }
        for a in status
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
        {
            if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
                if let Ok(ip) = a.address.parse::<Ipv4Addr>() {
                    out.insert(ip);
                }
            }
        }
    }
    out.into_iter().collect()
}

struct State {
    ctx: Ctx,
    pool: Pool,
    services: Store<Service>,
    nodes: Store<Node>,
    backoff: Backoff,
    /// Statuses written but maybe not yet in the cache: key → (resourceVersion, ips).
    written: Mutex<HashMap<Key, (String, Vec<String>)>>,
    /// The last pending reason reported per Service (one Event per new reason).
    reported: Mutex<HashMap<Key, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of Service {0}: {1}")]
    Write(String, #[source] kube::Error),
    #[error("listing Services: {0}")]
    List(#[source] kube::Error),
}

pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let pool = ctx.config.lb_pool.clone();
    let svc_api: Api<Service> = Api::all(client.clone());
    let (nodes, node_writer) = kube::runtime::reflector::store::<Node>();
    let controller = Controller::new(svc_api.clone(), watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(1));
    let services = controller.store();
    let state = Arc::new(State {
        ctx: ctx.clone(),
        pool: pool.clone(),
        services: services.clone(),
        nodes,
        backoff: Backoff::default(),
        written: Mutex::new(HashMap::new()),
        reported: Mutex::new(HashMap::new()),
    });
    // Any Service change (a deleted one frees its IP) re-runs the pending ones; without a
    // pool, any node change re-runs all (their status is the nodes' addresses).
    let pending_of = {
        let services = services.clone();
        move |_: Service| {
            services
                .state()
                .into_iter()
                .filter(|s| eligible(s) && status_ips(s).is_empty())
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let node_stream = kube::runtime::reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
    use kube::runtime::WatchStreamExt as _;
    let with_nodes = pool.is_empty();
    let node_changes = node_stream.touched_objects().filter_map(move |r| {
        std::future::ready(match r {
            Ok(_) if with_nodes => Some(()),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("loadbalancer: watching nodes: {e}");
                None
            }
        })
    });
    if pool.is_empty() {
        tracing::info!("loadbalancer controller started: no --lb-pool, publishing node addresses");
    } else {
        tracing::info!(
            "loadbalancer controller started: pool {pool} ({} addresses)",
            pool.size()
        );
    }
    controller
        .watches(svc_api, watcher::Config::default(), pending_of)
        .reconcile_all_on(node_changes)
        .run(reconcile, error_policy, state)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("loadbalancer: {e}");
            }
        })
        .await;
    anyhow::bail!("the loadbalancer controller stream ended")
}

/// `key`'s outcome when allocating over `services` (None: `key` is not an eligible one
/// among them).
fn pool_outcome<'a>(
    state: &State,
    key: &Key,
    services: impl Iterator<Item = &'a Service>,
) -> Option<Outcome> {
    let claims: Vec<Claim> = services
        .filter(|s| eligible(s))
        .map(|s| Claim {
            key: key_of(s),
            created: s.metadata.creation_timestamp.as_ref().map(|t| t.0),
            requested: requested(s),
            current: known_ips(state, s)
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect(),
        })
        .collect();
    allocate(&state.pool, &claims).remove(key)
}

fn key_of(svc: &Service) -> Key {
    (svc.namespace().unwrap_or_default(), svc.name_any())
}

fn error_policy(svc: Arc<Service>, e: &Error, state: Arc<State>) -> Action {
    let delay = state.backoff.failed(&key_str(&key_of(&svc)));
    tracing::warn!("loadbalancer: {e} (retrying in {delay:?})");
    Action::requeue(delay)
}

/// The IPs `svc` holds as far as this controller knows: its cached status, or what was
/// written a moment ago and is not in the cache yet.
fn known_ips(state: &State, svc: &Service) -> Vec<String> {
    let key = key_of(svc);
    let mut written = state.written.lock().unwrap_or_else(|e| e.into_inner());
    let cached = status_ips(svc);
    if let Some((rv, ips)) = written.get(&key) {
        // The cache has caught up once it shows our write's resourceVersion or a later
        // one (opaque upstream; skiff's and etcd's are store revisions, so "later" is a
        // larger number).
        let seen = svc.resource_version().is_some_and(|cur| {
            cur == *rv || matches!((cur.parse::<u64>(), rv.parse::<u64>()), (Ok(c), Ok(w)) if c > w)
        });
        if seen || cached == *ips {
            written.remove(&key);
        } else {
            return ips.clone();
        }
    }
    cached
}

async fn reconcile(svc: Arc<Service>, state: Arc<State>) -> Result<Action, Error> {
    let key = key_of(&svc);
    let api: Api<Service> = Api::namespaced(state.ctx.client.clone(), &key.0);
    let current = known_ips(&state, &svc);
    if !eligible(&svc) {
        let ours_to_clear =
            svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer");
        if ours_to_clear && !current.is_empty() {
            let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": null}}});
            write(&state, &api, &key, &patch, Vec::new()).await?;
            tracing::info!(
                "loadbalancer: cleared the status of {} (no longer type LoadBalancer)",
                key_str(&key)
            );
        }
        state.backoff.succeeded(&key_str(&key));
        return Ok(Action::await_change());
    }

    let outcome = if state.pool.is_empty() {
        let ips = node_addresses(&state.nodes.state());
        if ips.is_empty() {
            Outcome::Pending("no node has an InternalIP or ExternalIP to publish".into())
        } else {
            Outcome::Assigned(ips)
        }
    } else {
        let cached = state.services.state();
        match pool_outcome(&state, &key, cached.iter().map(|s| s.as_ref())) {
            Some(Outcome::Assigned(ips))
                if ips
                    .iter()
                    .map(Ipv4Addr::to_string)
                    .eq(current.iter().cloned()) =>
            {
                Outcome::Assigned(ips)
            }
            _ => {
                // About to write or to report a failure: decide on a fresh list, not on a
                // cache that may lag (a Service deleted a moment ago still holding its IP, a
                // status written by another sync not seen yet).
                let live = Api::<Service>::all(state.ctx.client.clone())
                    .list(&ListParams::default())
                    .await
                    .map_err(Error::List)?;
                match pool_outcome(&state, &key, live.items.iter()) {
                    Some(o) => o,
                    // Deleted or changed since the cache saw it: its own event re-runs it.
                    None => return Ok(Action::await_change()),
                }
            }
        }
    };

    match outcome {
        Outcome::Assigned(ips) => {
            state
                .reported
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            let want: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
            if want != current {
                let ingress: Vec<serde_json::Value> = want
                    .iter()
                    .map(|ip| serde_json::json!({"ip": ip, "ipMode": "VIP"}))
                    .collect();
                let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
                write(&state, &api, &key, &patch, want.clone()).await?;
                let msg = if state.pool.is_empty() {
                    format!("Published node addresses {}", want.join(", "))
                } else {
                    format!("Assigned IP {} from the pool", want.join(", "))
                };
                tracing::info!("loadbalancer: {}: {msg}", key_str(&key));
                state
                    .ctx
                    .events
                    .publish(svc.as_ref(), EventType::Normal, "IPAllocated", &msg)
                    .await;
            }
            state.backoff.succeeded(&key_str(&key));
            Ok(Action::await_change())
        }
        Outcome::Pending(why) => {
            if !current.is_empty() {
                // Lost its IP (a duplicate the older Service keeps, or no longer valid).
                let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": null}}});
                write(&state, &api, &key, &patch, Vec::new()).await?;
            }
            let new_reason = state
                .reported
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), why.clone())
                .is_none_or(|old| old != why);
            if new_reason {
                tracing::warn!("loadbalancer: {} stays pending: {why}", key_str(&key));
                state
                    .ctx
                    .events
                    .publish(svc.as_ref(), EventType::Warning, "AllocationFailed", &why)
                    .await;
            }
            state.backoff.succeeded(&key_str(&key));
            // Freed IPs re-run pending Services through the watch; this is the safety net.
            Ok(Action::requeue(Duration::from_secs(60)))
        }
    }
}

async fn write(
    state: &State,
    api: &Api<Service>,
    key: &Key,
    patch: &serde_json::Value,
    ips: Vec<String>,
) -> Result<(), Error> {
    let updated = api
        .patch_status(&key.1, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|e| Error::Write(key_str(key), e))?;
    state
        .written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            key.clone(),
            (updated.resource_version().unwrap_or_default(), ips),
        );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn claim(name: &str, age: i64, requested: &[&str], current: &[&str]) -> Claim {
        Claim {
            key: ("default".into(), name.into()),
            created: Some(Timestamp::from_second(1_700_000_000 + age).unwrap()),
            requested: Ok(requested.iter().map(|s| ip(s)).collect()),
            current: current.iter().map(|s| ip(s)).collect(),
        }
    }

    fn pool(s: &str) -> Pool {
        Pool::parse(&[s]).unwrap()
    }

    fn got(out: &BTreeMap<Key, Outcome>, name: &str) -> Outcome {
        out[&("default".to_string(), name.to_string())].clone()
    }

    #[test]
    fn assigns_in_age_order_and_keeps_what_is_held() {
        let p = pool("192.0.2.10-192.0.2.12");
        let out = allocate(
            &p,
            &[
                claim("young", 30, &[], &[]),
                claim("old", 10, &[], &[]),
                claim("holder", 20, &[], &["192.0.2.10"]),
            ],
        );
        assert_eq!(
            got(&out, "holder"),
            Outcome::Assigned(vec![ip("192.0.2.10")])
        );
        assert_eq!(got(&out, "old"), Outcome::Assigned(vec![ip("192.0.2.11")]));
        assert_eq!(
            got(&out, "young"),
            Outcome::Assigned(vec![ip("192.0.2.12")])
        );
        // Stable: running again over the result changes nothing.
        let again = allocate(
            &p,
            &[
                claim("young", 30, &[], &["192.0.2.12"]),
                claim("old", 10, &[], &["192.0.2.11"]),
                claim("holder", 20, &[], &["192.0.2.10"]),
            ],
        );
        assert_eq!(again, out);
    }

    #[test]
    fn exhaustion_leaves_the_youngest_pending_with_the_reason() {
        let p = pool("192.0.2.10/32");
        let out = allocate(&p, &[claim("a", 1, &[], &[]), claim("b", 2, &[], &[])]);
        assert_eq!(got(&out, "a"), Outcome::Assigned(vec![ip("192.0.2.10")]));
        let Outcome::Pending(why) = got(&out, "b") else {
            panic!("b should be pending")
        };
        assert!(
            why.contains("no free IP") && why.contains("all 1 addresses"),
            "{why}"
        );
    }

    #[test]
    fn requests_are_honoured_inside_the_pool_when_free() {
        let p = pool("192.0.2.0/24");
        let out = allocate(
            &p,
            &[
                claim("asks", 1, &["192.0.2.50", "192.0.2.51"], &[]),
                claim("outside", 2, &["198.51.100.1"], &[]),
                claim("taken", 3, &["192.0.2.50"], &[]),
                claim("auto", 4, &[], &[]),
            ],
        );
        assert_eq!(
            got(&out, "asks"),
            Outcome::Assigned(vec![ip("192.0.2.50"), ip("192.0.2.51")])
        );
        let Outcome::Pending(why) = got(&out, "outside") else {
            panic!()
        };
        assert!(why.contains("not in the LoadBalancer pool"), "{why}");
        let Outcome::Pending(why) = got(&out, "taken") else {
            panic!()
        };
        assert!(
            why.contains("already allocated to Service default/asks"),
            "{why}"
        );
        assert_eq!(got(&out, "auto"), Outcome::Assigned(vec![ip("192.0.2.1")]));
        // A request that changes moves the Service to the new IP.
        let out = allocate(&p, &[claim("asks", 1, &["192.0.2.60"], &["192.0.2.50"])]);
        assert_eq!(got(&out, "asks"), Outcome::Assigned(vec![ip("192.0.2.60")]));
        // A bad request is reported, not guessed at.
        let mut bad = claim("bad", 1, &[], &[]);
        bad.requested = Err("spec.loadBalancerIP: \"x\" is not an IPv4 address".into());
        let out = allocate(&p, &[bad]);
        assert!(matches!(got(&out, "bad"), Outcome::Pending(w) if w.contains("not an IPv4")));
    }

    #[test]
    fn duplicates_go_to_the_oldest_and_foreign_ips_are_replaced() {
        let p = pool("192.0.2.10-192.0.2.11");
        let out = allocate(
            &p,
            &[
                claim("young", 20, &[], &["192.0.2.10"]),
                claim("old", 10, &[], &["192.0.2.10"]),
                claim("stray", 30, &[], &["203.0.113.9"]),
            ],
        );
        assert_eq!(got(&out, "old"), Outcome::Assigned(vec![ip("192.0.2.10")]));
        assert_eq!(
            got(&out, "young"),
            Outcome::Assigned(vec![ip("192.0.2.11")])
        );
        assert!(matches!(got(&out, "stray"), Outcome::Pending(_)));
    }

    #[test]
    fn eligibility_requests_and_pool_flags() {
        let mut svc = Service::default();
        assert!(!eligible(&svc));
        svc.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_ip: Some("192.0.2.5".into()),
            ..Default::default()
        });
        assert!(eligible(&svc));
        assert_eq!(requested(&svc), Ok(vec![ip("192.0.2.5")]));
        svc.metadata.annotations = Some(
            [(
                IPS_ANNOTATION.to_string(),
                "192.0.2.7, 192.0.2.8".to_string(),
            )]
            .into(),
        );
        assert_eq!(requested(&svc), Ok(vec![ip("192.0.2.7"), ip("192.0.2.8")]));
        svc.metadata.annotations = Some([(IPS_ANNOTATION.to_string(), "nope".to_string())].into());
        assert!(requested(&svc).unwrap_err().contains(IPS_ANNOTATION));
        svc.spec.as_mut().unwrap().load_balancer_class = Some(LB_CLASS.into());
        assert!(eligible(&svc));
        svc.spec.as_mut().unwrap().load_balancer_class = Some("metallb.io/x".into());
        assert!(!eligible(&svc));

        let p = Pool::parse(&["192.0.2.0/30,192.0.2.100-192.0.2.101", "198.51.100.1/32"]).unwrap();
        assert_eq!(p.size(), 5);
        let e = Pool::parse(&["192.0.2.0/30,bogus"]).unwrap_err();
        assert!(e.starts_with("--lb-pool: \"bogus\""), "{e}");
    }
}
