//! ClusterIP and NodePort allocation for Services (upstream's service REST allocators),
//! IPv4 only.
//!
//! Every allocated value is a reservation key in the store, created with create-if-absent
//! (`/registry/skiff.io/serviceips/<ip>`, `/registry/skiff.io/servicenodeports/<port>`,
//! value: the holding Service's namespace, name and uid). That is KEP-1880's object-per-IP
//! model rather than the legacy bitmap: two API servers on one etcd, or two concurrent
//! creates on one server, can never hand out the same value, because only one `create` of
//! a key succeeds. A create writes its Service and the reservations of the free values it
//! picked in one atomic store write ([`Allocator::create_with`]), so a Service create costs
//! one commit, not one more per value. A reservation whose holder is gone or no longer
//! uses the value (an update that reserved a value and then failed to write, or a crash in
//! between) is taken over, and the repair pass
//! ([`Allocator::repair`], at startup and every 3 minutes like upstream's repair
//! controllers) re-creates missing reservations, removes leaked ones and reports
//! duplicates.
//!
//! Picking a free dynamic value does not read every reservation: each server keeps a hint
//! of the values it believes taken ([`TakenHint`]), loaded from the store once and after
//! every repair pass, and kept current by its own reservations and releases. The
//! reservation's create-if-absent still decides; the hint only saves probing values known
//! to be taken. (Listing all reservations per create made a Service create cost O(number
//! of Services): creating 10k Services slowed from ~280/s to ~23/s by the 5,000th.)
//!
//! Dynamic values come from the upper band first: offset `min(max(16, size/16), 256)` for
//! IPs (upstream's ClusterIP static band) and `min(max(16, size/32), 128)` for node ports
//! (KEP-3668), so values users pick by hand from the low band rarely collide.
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{json, Value};
use skiff_api::field::FieldError;
use skiff_api::status::{self as st, StatusError};
use skiff_store::{ListOptions, Store, StoreError};

/// The Service ClusterIP range (k3s's default 10.43.0.0/16).
#[derive(Clone, Copy, Debug)]
pub struct ServiceCidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Default for ServiceCidr {
    fn default() -> Self {
        ServiceCidr {
            base: Ipv4Addr::new(10, 43, 0, 0),
            prefix: 16,
        }
    }
}

impl std::str::FromStr for ServiceCidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR like 10.43.0.0/16"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = p.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("{s:?}: the prefix length must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(ServiceCidr {
            base: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }
}

impl ServiceCidr {
    /// The first usable address, reserved for the `kubernetes` Service (upstream's rule).
    pub fn kubernetes_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.base)
    }
}

fn invalid(name: &str, field: &str, value: Value, detail: &str) -> StatusError {
    st::invalid(
        "",
        "Service",
        name,
        &[FieldError::invalid(field, value, detail)],
    )
}

const IP_PREFIX: &str = "/registry/skiff.io/serviceips/";
const PORT_PREFIX: &str = "/registry/skiff.io/servicenodeports/";

/// The NodePort range (`--service-node-port-range`, upstream's default 30000-32767).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePortRange {
    pub min: u16,
    pub max: u16,
}

impl Default for NodePortRange {
    fn default() -> Self {
        NodePortRange {
            min: 30000,
            max: 32767,
        }
    }
}

impl std::str::FromStr for NodePortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port range like 30000-32767");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let min: u16 = a.trim().parse().map_err(|_| bad())?;
        let max: u16 = b.trim().parse().map_err(|_| bad())?;
        if min == 0 || min > max {
            return Err(format!(
                "{s:?}: the range must be non-empty and start above 0"
            ));
        }
        Ok(NodePortRange { min, max })
    }
}

impl std::fmt::Display for NodePortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl NodePortRange {
    fn size(&self) -> u32 {
        u32::from(self.max - self.min) + 1
    }
    fn contains(&self, p: i64) -> bool {
        (i64::from(self.min)..=i64::from(self.max)).contains(&p)
    }
}

/// Offsets of a range of `size` values in allocation order: a random start inside the
/// upper band `[band, size)`, then a random start inside the lower band `[0, band)`
/// (upstream's `randomScanStrategyWithOffset`). The lower band's start is random too so
/// that servers sharing a store do not walk it in lock step, each losing the race for
/// the value the other just took.
fn candidates(size: u32, band: u32, seed: u32) -> impl Iterator<Item = u32> {
    let band = band.min(size);
    let upper = size - band;
    let start = if upper > 0 { seed % upper } else { 0 };
    // Another part of the seed, so the two starts are independent.
    let lower_start = if band > 0 {
        seed.rotate_right(16) % band
    } else {
        0
    };
    (0..upper)
        .map(move |i| band + (start + i) % upper)
        .chain((0..band).map(move |i| (lower_start + i) % band))
}

fn random_u32() -> u32 {
    u32::from_le_bytes(crate::pki::random_bytes(4).try_into().unwrap_or([0; 4]))
}

/// The values a Service holds: its ClusterIP and its node ports (incl. healthCheckNodePort).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Held {
    ip: Option<Ipv4Addr>,
    ports: BTreeSet<i64>,
}

impl Held {
    fn of(svc: &Value) -> Held {
        let ip = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok());
        let mut ports: BTreeSet<i64> = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
            .filter(|n| *n != 0)
            .collect();
        if let Some(h) = svc
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_i64)
            .filter(|n| *n != 0)
        {
            ports.insert(h);
        }
        Held { ip, ports }
    }

    fn keys(&self) -> BTreeSet<String> {
        self.ip
            .map(|ip| format!("{IP_PREFIX}{ip}"))
            .into_iter()
            .chain(self.ports.iter().map(|p| format!("{PORT_PREFIX}{p}")))
            .collect()
    }
}

/// How old a reservation must be before a missing holder makes it a leak: a create that
/// reserved a value but has not written its Service yet is in flight, not leaked.
const LEAK_GRACE_SECS: i64 = 60;

fn holder_of(svc: &Value) -> Value {
    json!({
        "namespace": svc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(""),
        "name": svc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(""),
        "uid": svc.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or(""),
        "reservedAt": crate::util::now_unix(),
    })
}

/// Old enough that a holder which does not use it has leaked it.
fn past_grace(holder: &Value) -> bool {
    let at = holder
        .get("reservedAt")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    crate::util::now_unix() - at >= LEAK_GRACE_SECS
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// What one request reserved. `keys` are written already (take-overs of leaked
/// reservations, and every value an update adds): [`Allocator::release`] them if the write
/// that needed them fails, so a rejected request leaves nothing behind. `deferred` are
/// values found free that a create writes together with its Service, in one atomic store
/// write ([`Allocator::create_with`]): one commit per Service create instead of one more
/// per allocated value, and no reservation without its Service after a crash.
#[derive(Debug, Default)]
#[must_use = "write the deferred keys with the Service, or release the keys if its write fails"]
pub struct Reservation {
    pub keys: Vec<String>,
    pub deferred: Vec<(String, Bytes)>,
    /// Whether free values are deferred (creates) or written at once (updates).
    defer: bool,
    /// Deferred values the hint does not know as taken are taken as free without reading
    /// the store: the Service's write (`create_revision == 0` per key) checks them anyway,
    /// and a value someone holds fails it as [`CreateFailed::Raced`]. Saves a store round
    /// trip per value on a create's first attempt.
    trust_hint: bool,
}

/// Why [`Allocator::create_with`] failed; what it reserved has been released either way.
#[derive(Debug)]
pub enum CreateFailed {
    /// Another create took one of the deferred values first: allocate again.
    Raced {
        key: String,
    },
    Store(StoreError),
}

/// What a repair pass found and fixed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Reservations re-created for values Services hold.
    pub restored: Vec<String>,
    /// Reservations removed because no Service holds the value.
    pub leaked: Vec<String>,
    /// Values two Services hold at once (can only be fixed by a user).
    pub duplicates: Vec<String>,
}

pub struct Allocator {
    store: Arc<dyn Store>,
    cidr: ServiceCidr,
    ports: NodePortRange,
    taken: Mutex<TakenHint>,
}

/// Reservation keys this server believes exist, per prefix ([`IP_PREFIX`],
/// [`PORT_PREFIX`]). Wrong only in ways that cost a probe, never a duplicate: a key another
/// server created is found on `reserve` and added; a key another server deleted stays here
/// until the next reload (after a repair pass, or when the range looks full), so a free
/// value is at worst skipped for a while.
#[derive(Default)]
struct TakenHint {
    /// Prefixes whose keys have been loaded from the store.
    loaded: HashSet<&'static str>,
    keys: HashSet<String>,
}

fn internal(e: StoreError) -> StatusError {
    st::internal_error(&e.to_string())
}

impl Allocator {
    pub fn new(store: Arc<dyn Store>, cidr: ServiceCidr, ports: NodePortRange) -> Allocator {
        Allocator {
            store,
            cidr,
            ports,
            taken: Mutex::new(TakenHint::default()),
        }
    }

    fn hint(&self) -> std::sync::MutexGuard<'_, TakenHint> {
        // A set of strings cannot be left half-updated in a way that matters: it is a hint.
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the reservations under `prefix` into the hint unless loaded (`reload`: always).
    async fn load_hint(&self, prefix: &'static str, reload: bool) -> Result<(), StoreError> {
        if !reload && self.hint().loaded.contains(prefix) {
            return Ok(());
        }
        let page = self.store.list(prefix, ListOptions::default()).await?;
        let mut hint = self.hint();
        hint.keys.retain(|k| !k.starts_with(prefix));
        hint.keys.extend(page.items.into_iter().map(|kv| kv.key));
        hint.loaded.insert(prefix);
        Ok(())
    }

    fn hinted_taken(&self, key: &str) -> bool {
        self.hint().keys.contains(key)
    }

    fn note_taken(&self, key: &str) {
        self.hint().keys.insert(key.to_string());
    }

    fn note_free(&self, key: &str) {
        self.hint().keys.remove(key);
    }

    pub fn cidr(&self) -> ServiceCidr {
        self.cidr
    }

    /// Is the Service `holder` names alive with the same uid and still using `key`?
    async fn holder_uses(&self, holder: &Value, key: &str) -> Result<bool, StoreError> {
        let svc_key = format!(
            "/registry/services/{}/{}",
            str_at(holder, "/namespace"),
            str_at(holder, "/name")
        );
        let Some(kv) = self.store.get(&svc_key).await? else {
            return Ok(false);
        };
        let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) else {
            return Ok(false);
        };
        Ok(str_at(&svc, "/metadata/uid") == str_at(holder, "/uid")
            && Held::of(&svc).keys().contains(key))
    }

    /// Reserves `key` for `holder` into `res`: created if absent (or, for a create,
    /// deferred to the Service's write), taken over if its holder is gone or no longer
    /// uses it. `Ok(false)`: a live Service holds it. With `dry`, only checks.
    async fn reserve(
        &self,
        key: &str,
        holder: &Value,
        dry: bool,
        res: &mut Reservation,
    ) -> Result<bool, StoreError> {
        let reserved = self.reserve_inner(key, holder, dry, res).await?;
        // Reserved here (or deferred: then concurrent creates on this server skip it), or
        // held by someone else: either way taken (a dry run reserves nothing).
        if !reserved || !dry {
            self.note_taken(key);
        }
        Ok(reserved)
    }

    async fn reserve_inner(
        &self,
        key: &str,
        holder: &Value,
        dry: bool,
        res: &mut Reservation,
    ) -> Result<bool, StoreError> {
        let bytes = Bytes::from(serde_json::to_vec(holder).unwrap_or_default());
        let written = |res: &mut Reservation| -> Result<bool, StoreError> {
            if !dry {
                res.keys.push(key.to_string());
            }
            Ok(true)
        };
        if res.trust_hint && res.defer && !self.hinted_taken(key) {
            res.deferred.push((key.to_string(), bytes));
            return Ok(true);
        }
        for _ in 0..4 {
            let existing = self.store.get(key).await?;
            match existing {
                None if dry => return Ok(true),
                None if res.defer => {
                    res.deferred.push((key.to_string(), bytes));
                    return Ok(true);
                }
                None => match self.store.create(key, bytes.clone()).await {
                    Ok(_) => return written(res),
                    Err(StoreError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e),
                },
                Some(kv) => {
                    let cur: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
                    if str_at(&cur, "/uid") == str_at(holder, "/uid")
                        && !str_at(holder, "/uid").is_empty()
                    {
                        return written(res);
                    }
                    if !past_grace(&cur) || self.holder_uses(&cur, key).await? {
                        return Ok(false);
                    }
                    if dry {
                        return Ok(true);
                    }
                    tracing::info!(
                        "taking over the leaked reservation {key} (held by {}/{} which no longer uses it)",
                        str_at(&cur, "/namespace"),
                        str_at(&cur, "/name")
                    );
                    match self
                        .store
                        .update(key, bytes.clone(), Some(kv.mod_revision))
                        .await
                    {
                        Ok(_) => return written(res),
                        Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => {
                            continue
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(false)
    }

    async fn dynamic_ip(
        &self,
        holder: &Value,
        dry: bool,
        res: &mut Reservation,
    ) -> Result<Ipv4Addr, StatusError> {
        let size = self.cidr.size();
        let band = (size / 16).clamp(16, 256);
        let base = u32::from(self.cidr.base);
        let kubernetes = self.cidr.kubernetes_ip();
        // The second pass, after reloading the hint, finds values other servers freed.
        for reload in [false, true] {
            self.load_hint(IP_PREFIX, reload).await.map_err(internal)?;
            for off in candidates(size, band, random_u32()) {
                // Neither the network nor the broadcast address, nor the `kubernetes` one.
                if off == 0 || off == size - 1 {
                    continue;
                }
                let ip = Ipv4Addr::from(base + off);
                let key = format!("{IP_PREFIX}{ip}");
                if ip == kubernetes || self.hinted_taken(&key) {
                    continue;
                }
                if self
                    .reserve(&key, holder, dry, res)
                    .await
                    .map_err(internal)?
                {
                    return Ok(ip);
                }
            }
        }
        Err(st::internal_error(&format!(
            "failed to allocate a serviceIP: range is full (no free address in {}/{})",
            self.cidr.base, self.cidr.prefix
        )))
    }

    async fn dynamic_port(
        &self,
        holder: &Value,
        taken_here: &BTreeSet<i64>,
        dry: bool,
        res: &mut Reservation,
    ) -> Result<i64, StatusError> {
        let size = self.ports.size();
        let band = (size / 32).clamp(16, 128);
        for reload in [false, true] {
            self.load_hint(PORT_PREFIX, reload)
                .await
                .map_err(internal)?;
            for off in candidates(size, band, random_u32()) {
                let port = i64::from(self.ports.min) + i64::from(off);
                let key = format!("{PORT_PREFIX}{port}");
                if taken_here.contains(&port) || self.hinted_taken(&key) {
                    continue;
                }
                if self
                    .reserve(&key, holder, dry, res)
                    .await
                    .map_err(internal)?
                {
                    return Ok(port);
                }
            }
        }
        Err(st::internal_error(&format!(
            "failed to allocate a nodePort: range {} is full",
            self.ports
        )))
    }

    /// Reserves a node port the user asked for, or explains why it cannot be had.
    async fn requested_port(
        &self,
        name: &str,
        field: &str,
        port: i64,
        holder: &Value,
        dry: bool,
        res: &mut Reservation,
    ) -> Result<(), StatusError> {
        if !self.ports.contains(port) {
            return Err(invalid(
                name,
                field,
                json!(port),
                &format!(
                    "provided port is not in the valid range. The range of valid ports is {}",
                    self.ports
                ),
            ));
        }
        let key = format!("{PORT_PREFIX}{port}");
        if !self
            .reserve(&key, holder, dry, res)
            .await
            .map_err(internal)?
        {
            return Err(invalid(
                name,
                field,
                json!(port),
                "provided port is already allocated",
            ));
        }
        Ok(())
    }

    /// Fills and reserves what `svc` needs beyond what `old` (the stored object of an
    /// update) already holds. On error, everything reserved here has been released.
    async fn fill(
        &self,
        old: Option<&Value>,
        svc: &mut Value,
        dry: bool,
        trust_hint: bool,
    ) -> Result<Reservation, StatusError> {
        let mut res = Reservation {
            defer: old.is_none(),
            trust_hint: trust_hint && old.is_none() && !dry,
            ..Reservation::default()
        };
        match self.fill_inner(old, svc, dry, &mut res).await {
            Ok(()) => Ok(res),
            Err(e) => {
                self.abandon(res, None).await;
                Err(e)
            }
        }
    }

    /// Gives up what `res` reserved: releases the written keys, forgets the deferred ones
    /// (except `taken`, which another create holds).
    async fn abandon(&self, res: Reservation, taken: Option<&str>) {
        for (key, _) in &res.deferred {
            if Some(key.as_str()) != taken {
                self.note_free(key);
            }
        }
        self.release(res.keys).await;
    }

    /// Creates the Service `value` at `key` together with the reservations `res` deferred,
    /// in one atomic store write. On failure everything `res` reserved is released;
    /// [`CreateFailed::Raced`] means another create took a deferred value between the
    /// check and this write, so the caller allocates again (the hint now knows it taken).
    pub async fn create_with(
        &self,
        res: Reservation,
        key: &str,
        value: Bytes,
    ) -> Result<skiff_store::Revision, CreateFailed> {
        let written = if res.deferred.is_empty() {
            self.store.create(key, value).await
        } else {
            // The Service first: on etcd the whole write is one revision, and the watch
            // cache must have applied the Service once its revision shows as reached.
            let writes = std::iter::once((key.to_string(), value))
                .chain(res.deferred.iter().cloned())
                .collect();
            self.store.create_all(writes).await.map(|revs| revs[0])
        };
        match written {
            Ok(rev) => Ok(rev),
            Err(StoreError::AlreadyExists { key: taken }) if taken != key => {
                self.abandon(res, Some(&taken)).await;
                Err(CreateFailed::Raced { key: taken })
            }
            Err(e) => {
                self.abandon(res, None).await;
                Err(CreateFailed::Store(e))
            }
        }
    }

    async fn fill_inner(
        &self,
        old: Option<&Value>,
        svc: &mut Value,
        dry: bool,
        res: &mut Reservation,
    ) -> Result<(), StatusError> {
        let name = str_at(svc, "/metadata/name").to_string();
        let ty = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let holder = holder_of(svc);
        let old_held = old.map(Held::of).unwrap_or_default();
        let old_keys = old_held.keys();
        if ty == "ExternalName" {
            return Ok(());
        }

        // ClusterIP.
        let requested = str_at(svc, "/spec/clusterIP").to_string();
        if requested != "None" {
            let ip = if requested.is_empty() {
                self.dynamic_ip(&holder, dry, res).await?
            } else {
                let parsed: Ipv4Addr = requested.parse().map_err(|_| {
                    invalid(
                        &name,
                        "spec.clusterIPs[0]",
                        json!(requested),
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    )
                })?;
                let key = format!("{IP_PREFIX}{parsed}");
                if !old_keys.contains(&key) {
                    if !self.cidr.contains(parsed) {
                        return Err(invalid(
                            &name,
                            "spec.clusterIPs",
                            json!([requested]),
                            &format!(
                                "failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}/{}",
                                self.cidr.base, self.cidr.prefix
                            ),
                        ));
                    }
                    if !self
                        .reserve(&key, &holder, dry, res)
                        .await
                        .map_err(internal)?
                    {
                        return Err(invalid(
                            &name,
                            "spec.clusterIPs",
                            json!([requested]),
                            &format!(
                                "failed to allocate IP {requested}: provided IP is already allocated"
                            ),
                        ));
                    }
                }
                parsed
            };
            svc["spec"]["clusterIP"] = json!(ip.to_string());
            svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
        }

        // Node ports: NodePort, and LoadBalancer unless allocateLoadBalancerNodePorts=false.
        let wants_node_ports = ty == "NodePort"
            || (ty == "LoadBalancer"
                && svc
                    .pointer("/spec/allocateLoadBalancerNodePorts")
                    .and_then(Value::as_bool)
                    != Some(false));
        let mut taken_here: BTreeSet<i64> = BTreeSet::new();
        let n_ports = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        for i in 0..n_ports {
            let field = format!("spec.ports[{i}].nodePort");
            let current = svc["spec"]["ports"][i]
                .get("nodePort")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if current != 0 {
                // The same number for TCP and UDP of one Service is allowed (upstream).
                if !taken_here.insert(current) {
                    continue;
                }
                if !old_held.ports.contains(&current) {
                    self.requested_port(&name, &field, current, &holder, dry, res)
                        .await?;
                }
            } else if wants_node_ports {
                let port = self.dynamic_port(&holder, &taken_here, dry, res).await?;
                taken_here.insert(port);
                svc["spec"]["ports"][i]["nodePort"] = json!(port);
            }
        }

        // healthCheckNodePort: only LoadBalancer with externalTrafficPolicy=Local has one.
        let local = str_at(svc, "/spec/externalTrafficPolicy") == "Local";
        if ty == "LoadBalancer" && local {
            let current = svc
                .pointer("/spec/healthCheckNodePort")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let kept = old
                .and_then(|o| o.pointer("/spec/healthCheckNodePort"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if current == 0 && kept != 0 {
                svc["spec"]["healthCheckNodePort"] = json!(kept);
            } else if current == 0 {
                let port = self.dynamic_port(&holder, &taken_here, dry, res).await?;
                svc["spec"]["healthCheckNodePort"] = json!(port);
            } else if !old_held.ports.contains(&current) {
                if taken_here.contains(&current) {
                    return Err(invalid(
                        &name,
                        "spec.healthCheckNodePort",
                        json!(current),
                        "provided port is already allocated",
                    ));
                }
                self.requested_port(
                    &name,
                    "spec.healthCheckNodePort",
                    current,
                    &holder,
                    dry,
                    res,
                )
                .await?;
            }
        } else if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
            // No longer LoadBalancer+Local: upstream releases and clears it.
            spec.remove("healthCheckNodePort");
        }
        Ok(())
    }

    /// A Service being created: fills `spec.clusterIP(s)`, node ports and
    /// healthCheckNodePort and reserves them: values found free are deferred to
    /// [`Allocator::create_with`], which writes them with the Service (nothing is written
    /// with `dry`).
    pub async fn on_create(&self, svc: &mut Value, dry: bool) -> Result<Reservation, StatusError> {
        self.fill(None, svc, dry, false).await
    }

    /// [`Allocator::on_create`] for a create's first attempt: values the hint does not
    /// know as taken are deferred without reading the store (see `Reservation::trust_hint`);
    /// after a [`CreateFailed::Raced`], allocate again with [`Allocator::on_create`].
    pub async fn on_create_trusting_hint(
        &self,
        svc: &mut Value,
    ) -> Result<Reservation, StatusError> {
        self.fill(None, svc, false, true).await
    }

    /// A Service update from `old` to `new`: fills node ports / healthCheckNodePort the new
    /// spec needs and reserves values `old` did not hold. Returns the reservation and the
    /// keys to [`Allocator::release`] once the update is committed (values `old` held that
    /// `new` does not).
    pub async fn on_update(
        &self,
        old: &Value,
        new: &mut Value,
        dry: bool,
    ) -> Result<(Reservation, Vec<String>), StatusError> {
        let res = self.fill(Some(old), new, dry, false).await?;
        let keep = Held::of(new).keys();
        let freed = Held::of(old)
            .keys()
            .into_iter()
            .filter(|k| !keep.contains(k))
            .collect();
        Ok((res, freed))
    }

    /// Releases reservation keys (best effort: a failure leaves a leak the repair pass and
    /// the take-over rule fix).
    pub async fn release(&self, keys: Vec<String>) {
        for k in keys {
            match self.store.delete(&k, None).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => self.note_free(&k),
                Err(e) => tracing::warn!("releasing {k}: {e} (the repair pass will retry)"),
            }
        }
    }

    /// A Service was deleted: releases what it held (only reservations it still owns).
    pub async fn on_delete(&self, svc: &Value) {
        let uid = str_at(svc, "/metadata/uid");
        for key in Held::of(svc).keys() {
            let Ok(Some(kv)) = self.store.get(&key).await else {
                continue;
            };
            let cur: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
            if str_at(&cur, "/uid") != uid {
                continue;
            }
            match self.store.delete(&key, Some(kv.mod_revision)).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => self.note_free(&key),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => tracing::warn!("releasing {key}: {e} (the repair pass will retry)"),
            }
        }
    }

    /// Upstream's repair controllers: every value a Service holds has its reservation, no
    /// reservation outlives its Service, duplicates are reported.
    pub async fn repair(&self) -> Result<RepairReport, StoreError> {
        let report = self.repair_inner().await;
        // Whatever the pass changed (and whatever other servers did since the hint was
        // loaded): the next allocation reloads the hint.
        *self.hint() = TakenHint::default();
        report
    }

    async fn repair_inner(&self) -> Result<RepairReport, StoreError> {
        let mut report = RepairReport::default();
        let services = self
            .store
            .list("/registry/services/", ListOptions::default())
            .await?;
        // key -> holders (in creation order, so the oldest keeps a duplicated value).
        let mut wanted: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
        for kv in &services.items {
            let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let created = str_at(&svc, "/metadata/creationTimestamp").to_string();
            for key in Held::of(&svc).keys() {
                wanted
                    .entry(key)
                    .or_default()
                    .push((created.clone(), holder_of(&svc)));
            }
        }
        for holders in wanted.values_mut() {
            holders.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let mut existing = BTreeMap::new();
        for prefix in [IP_PREFIX, PORT_PREFIX] {
            for kv in self.store.list(prefix, ListOptions::default()).await?.items {
                existing.insert(kv.key.clone(), kv);
            }
        }
        for (key, kv) in &existing {
            let cur: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
            let live = wanted.get(key).is_some_and(|hs| {
                hs.iter()
                    .any(|(_, h)| str_at(h, "/uid") == str_at(&cur, "/uid"))
            });
            if !live && past_grace(&cur) {
                match self.store.delete(key, Some(kv.mod_revision)).await {
                    Ok(_) => report.leaked.push(key.clone()),
                    Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for (key, holders) in &wanted {
            if holders.len() > 1 {
                let names: Vec<String> = holders
                    .iter()
                    .map(|(_, h)| format!("{}/{}", str_at(h, "/namespace"), str_at(h, "/name")))
                    .collect();
                report.duplicates.push(format!(
                    "{} held by {}",
                    key.rsplit('/').next().unwrap_or(key),
                    names.join(", ")
                ));
            }
            let cur_ok = existing.get(key).is_some_and(|kv| {
                let cur: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
                holders
                    .iter()
                    .any(|(_, h)| str_at(h, "/uid") == str_at(&cur, "/uid"))
            });
            if !cur_ok {
                let bytes = Bytes::from(serde_json::to_vec(&holders[0].1).unwrap_or_default());
                let r = match existing.get(key) {
                    Some(kv) => self.store.update(key, bytes, Some(kv.mod_revision)).await,
                    None => self.store.create(key, bytes).await,
                };
                match r {
                    Ok(_) => report.restored.push(key.clone()),
                    Err(StoreError::AlreadyExists { .. })
                    | Err(StoreError::Conflict { .. })
                    | Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        let c: ServiceCidr = "10.43.7.9/16".parse().unwrap();
        assert_eq!(c.base, Ipv4Addr::new(10, 43, 0, 0));
        assert!(c.contains(Ipv4Addr::new(10, 43, 255, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!("10.0.0.0".parse::<ServiceCidr>().is_err());
        assert!("10.0.0.0/31".parse::<ServiceCidr>().is_err());
    }

    fn svc(name: &str, spec: Value) -> Value {
        json!({
            "metadata": {"namespace": "default", "name": name, "uid": format!("uid-{name}"),
                         "creationTimestamp": format!("2026-01-01T00:00:{:02}Z", name.len() % 60)},
            "spec": spec,
        })
    }

    async fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let s =
            skiff_store::RedbStore::open(dir.path().join("s.redb"), Default::default()).unwrap();
        (dir, Arc::new(s))
    }

    /// Writes the Service as the API would after a successful allocation.
    async fn commit(store: &Arc<dyn Store>, v: &Value) {
        let key = format!("/registry/services/default/{}", str_at(v, "/metadata/name"));
        store
            .create(&key, Bytes::from(serde_json::to_vec(v).unwrap()))
            .await
            .unwrap();
    }

    /// Creates the Service as the API does: allocates, then writes it together with its
    /// deferred reservations, allocating again when a concurrent create won a value.
    async fn create(a: &Allocator, v: &mut Value) -> Result<(), StatusError> {
        let unallocated = v.clone();
        for _ in 0..8 {
            let r = a.on_create(v, false).await?;
            let key = format!("/registry/services/default/{}", str_at(v, "/metadata/name"));
            let bytes = Bytes::from(serde_json::to_vec(v).unwrap());
            match a.create_with(r, &key, bytes).await {
                Ok(_) => return Ok(()),
                Err(CreateFailed::Raced { .. }) => *v = unallocated.clone(),
                Err(CreateFailed::Store(e)) => panic!("writing {key}: {e}"),
            }
        }
        panic!("lost 8 allocation races in a row")
    }

    fn alloc(store: &Arc<dyn Store>, cidr: &str) -> Allocator {
        Allocator::new(
            store.clone(),
            cidr.parse().unwrap(),
            NodePortRange::default(),
        )
    }

    #[test]
    fn candidates_cover_the_upper_band_first_then_the_lower() {
        let order: Vec<u32> = candidates(256, 16, 12345).collect();
        assert_eq!(order.len(), 256);
        assert!(order[..240].iter().all(|o| *o >= 16), "upper band first");
        assert!(order[240..].iter().all(|o| *o < 16), "then the lower band");
        // The lower band starts at a random offset too (not always at 0), and is walked
        // in order from there.
        let lower_starts: std::collections::BTreeSet<u32> = (0..64u32)
            .map(|seed| {
                candidates(256, 16, seed.wrapping_mul(0x9E37_79B9))
                    .nth(240)
                    .unwrap()
            })
            .collect();
        assert!(
            lower_starts.len() > 4,
            "lower band starts: {lower_starts:?}"
        );
        let lower = &order[240..];
        for w in lower.windows(2) {
            assert_eq!(w[1], (w[0] + 1) % 16, "the lower band is walked in order");
        }
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            (0..256).collect::<Vec<_>>(),
            "every offset exactly once"
        );
        assert_eq!(
            "30000-32767".parse::<NodePortRange>().unwrap(),
            NodePortRange::default()
        );
        assert!("32767-30000".parse::<NodePortRange>().is_err());
        assert!("30000".parse::<NodePortRange>().is_err());
    }

    #[tokio::test]
    async fn dynamic_ips_use_the_upper_band_until_it_is_full() {
        let (_d, store) = store().await;
        let a = alloc(&store, "10.96.0.0/24");
        let mut seen = HashSet::new();
        // 256 addresses - network - broadcast - kubernetes (.1) = 253 dynamic ones; the
        // upper band (.16-.254) has 239.
        for i in 0..253 {
            let mut s = svc(&format!("s{i}"), json!({"type": "ClusterIP"}));
            let r = a.on_create(&mut s, false).await.unwrap();
            // Free: deferred to the Service's own write, nothing written yet.
            assert!(r.keys.is_empty());
            assert_eq!(r.deferred.len(), 1);
            let key = format!("/registry/services/default/s{i}");
            let bytes = Bytes::from(serde_json::to_vec(&s).unwrap());
            a.create_with(r, &key, bytes).await.unwrap();
            let ip: Ipv4Addr = str_at(&s, "/spec/clusterIP").parse().unwrap();
            let last = ip.octets()[3];
            assert!(last != 0 && last != 255 && last != 1, "{ip}");
            if i < 239 {
                assert!(last >= 16, "allocation {i} took {ip} from the static band");
            }
            assert!(seen.insert(ip), "{ip} handed out twice");
            assert!(store
                .get(&format!("{IP_PREFIX}{ip}"))
                .await
                .unwrap()
                .is_some());
        }
        let mut s = svc("full", json!({"type": "ClusterIP"}));
        let e = a.on_create(&mut s, false).await.unwrap_err();
        assert!(e.message().contains("range is full"), "{e:?}");
    }

    /// Racing creates, on one server and on two sharing the store: every Service gets an
    /// address of its own, each address has exactly the reservation of its Service, and
    /// the range is used up exactly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creates_never_share_an_ip() {
        let (_d, store) = store().await;
        let servers = [
            Arc::new(alloc(&store, "10.96.0.0/27")),
            Arc::new(alloc(&store, "10.96.0.0/27")),
        ];
        // 32 - network - broadcast - kubernetes = 29 addresses for 29 racing creates.
        let tasks: Vec<_> = (0..29)
            .map(|i| {
                let a = servers[i % 2].clone();
                tokio::spawn(async move {
                    let mut s = svc(&format!("c{i}"), json!({}));
                    create(&a, &mut s).await.map(|_| s)
                })
            })
            .collect();
        let mut ips = HashSet::new();
        for t in tasks {
            let s = t.await.unwrap().expect("every create gets an address");
            let ip = str_at(&s, "/spec/clusterIP").to_string();
            let kv = store.get(&format!("{IP_PREFIX}{ip}")).await.unwrap();
            let holder: Value = serde_json::from_slice(&kv.expect("reserved").value).unwrap();
            assert_eq!(str_at(&holder, "/uid"), str_at(&s, "/metadata/uid"));
            assert!(ips.insert(ip), "{s} shares its address");
        }
        assert_eq!(ips.len(), 29);
        let mut full = svc("full", json!({}));
        let e = create(&servers[0], &mut full).await.unwrap_err();
        assert!(e.message().contains("range is full"), "{e:?}");
        let r = servers[1].repair().await.unwrap();
        assert_eq!(r, RepairReport::default(), "nothing to repair");
    }

    /// The Service and every value it allocates are one store commit (they were one
    /// commit per value plus one for the Service: the Service create latency of #5).
    #[tokio::test]
    async fn a_service_create_is_one_store_commit() {
        let dir = tempfile::tempdir().unwrap();
        let redb =
            skiff_store::RedbStore::open(dir.path().join("s.redb"), Default::default()).unwrap();
        let store: Arc<dyn Store> = Arc::new(redb.clone());
        let a = alloc(&store, "10.43.0.0/16");
        let mut lb = svc(
            "lb",
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                   "ports": [{"port": 80}, {"port": 443}]}),
        );
        let before = redb.write_commits();
        create(&a, &mut lb).await.unwrap();
        assert_eq!(redb.write_commits() - before, 1);
        let held = Held::of(&lb);
        assert_eq!(
            held.ports.len(),
            3,
            "two node ports and the health check port"
        );
        for key in held.keys() {
            let kv = store.get(&key).await.unwrap();
            let holder: Value = serde_json::from_slice(&kv.expect(&key).value).unwrap();
            assert_eq!(str_at(&holder, "/name"), "lb");
        }
    }

    /// A create that fails after allocating (its Service name is taken) leaves no
    /// reservation behind, and the value is free for the next create.
    #[tokio::test]
    async fn a_failed_create_leaves_no_reservation() {
        let (_d, store) = store().await;
        let a = alloc(&store, "10.96.0.0/29");
        let mut first = svc("same", json!({"clusterIP": "10.96.0.3"}));
        create(&a, &mut first).await.unwrap();
        let mut again = svc("same", json!({"clusterIP": "10.96.0.4"}));
        let r = a.on_create(&mut again, false).await.unwrap();
        let key = "/registry/services/default/same";
        let bytes = Bytes::from(serde_json::to_vec(&again).unwrap());
        match a.create_with(r, key, bytes).await {
            Err(CreateFailed::Store(StoreError::AlreadyExists { key: k })) => assert_eq!(k, key),
            other => panic!("expected the Service's AlreadyExists, got {other:?}"),
        }
        let ip4 = format!("{IP_PREFIX}10.96.0.4");
        assert!(store.get(&ip4).await.unwrap().is_none());
        let mut other = svc("other", json!({"clusterIP": "10.96.0.4"}));
        create(&a, &mut other).await.unwrap();
        assert!(store.get(&ip4).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn requested_ips_are_honoured_or_rejected_with_the_field() {
        let (_d, store) = store().await;
        let a = alloc(&store, "10.43.0.0/16");
        let mut s = svc("a", json!({"clusterIP": "10.43.0.10"}));
        create(&a, &mut s).await.unwrap();
        let mut dup = svc("b", json!({"clusterIP": "10.43.0.10"}));
        let e = a.on_create(&mut dup, false).await.unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message().contains("spec.clusterIPs: Invalid value: [\"10.43.0.10\"]: failed to allocate IP 10.43.0.10: provided IP is already allocated"),
            "{e:?}"
        );
        let mut out = svc("c", json!({"clusterIP": "10.44.0.1"}));
        let e = a.on_create(&mut out, false).await.unwrap_err();
        assert!(
            e.message()
                .contains("The range of valid IPs is 10.43.0.0/16"),
            "{e:?}"
        );
        let mut bad = svc("d", json!({"clusterIP": "ten"}));
        assert!(a
            .on_create(&mut bad, false)
            .await
            .unwrap_err()
            .message()
            .to_string()
            .contains("spec.clusterIPs[0]"));
        // Dry run reserves nothing.
        let mut dry = svc("e", json!({"clusterIP": "10.43.0.11"}));
        let r = a.on_create(&mut dry, true).await.unwrap();
        assert!(r.keys.is_empty() && r.deferred.is_empty());
        assert!(store
            .get(&format!("{IP_PREFIX}10.43.0.11"))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_reservation_whose_service_is_gone_is_taken_over() {
        let (_d, store) = store().await;
        let a = alloc(&store, "10.43.0.0/16");
        // A crash between reserving and writing the Service left this behind.
        store
            .create(
                &format!("{IP_PREFIX}10.43.0.20"),
                Bytes::from(
                    serde_json::to_vec(
                        &json!({"namespace": "default", "name": "ghost", "uid": "x"}),
                    )
                    .unwrap(),
                ),
            )
            .await
            .unwrap();
        let mut s = svc("real", json!({"clusterIP": "10.43.0.20"}));
        let r = a.on_create(&mut s, false).await.unwrap();
        assert_eq!(r.keys, vec![format!("{IP_PREFIX}10.43.0.20")]);
        // A fresh reservation of a Service not written yet (an update in flight on another
        // server) is neither taken over nor removed by the repair pass.
        let in_flight = svc("in-flight", json!({"clusterIP": "10.43.0.21"}));
        store
            .create(
                &format!("{IP_PREFIX}10.43.0.21"),
                Bytes::from(serde_json::to_vec(&holder_of(&in_flight)).unwrap()),
            )
            .await
            .unwrap();
        let mut late = svc("late", json!({"clusterIP": "10.43.0.21"}));
        let e = a.on_create(&mut late, false).await.unwrap_err();
        assert!(e.message().contains("already allocated"), "{e:?}");
        let r = a.repair().await.unwrap();
        assert!(
            !r.leaked.contains(&format!("{IP_PREFIX}10.43.0.21")),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn node_ports_and_health_check_ports() {
        let (_d, store) = store().await;
        let a = alloc(&store, "10.43.0.0/16");
        let mut np = svc(
            "np",
            json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "nodePort": 30001}]}),
        );
        create(&a, &mut np).await.unwrap();
        let p0 = np
            .pointer("/spec/ports/0/nodePort")
            .and_then(Value::as_i64)
            .unwrap();
        // KEP-3668: dynamic node ports avoid the static band (30000 + 86) while they can.
        assert!((30086..=32767).contains(&p0), "{p0}");
        let mut clash = svc(
            "clash",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]}),
        );
        let e = a.on_create(&mut clash, false).await.unwrap_err();
        assert!(
            e.message().contains(
                "spec.ports[0].nodePort: Invalid value: 30001: provided port is already allocated"
            ),
            "{e:?}"
        );
        // Nothing of the rejected request stays reserved: its ClusterIP was released.
        let ips = store.list(IP_PREFIX, ListOptions::default()).await.unwrap();
        assert_eq!(ips.items.len(), 1, "{:?}", ips.items);
        let mut range = svc(
            "range",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 8080}]}),
        );
        let e = a.on_create(&mut range, false).await.unwrap_err();
        assert!(
            e.message()
                .contains("The range of valid ports is 30000-32767"),
            "{e:?}"
        );

        let mut lb = svc(
            "lb",
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        );
        create(&a, &mut lb).await.unwrap();
        let hc = lb
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_i64)
            .unwrap();
        assert_ne!(
            hc,
            lb.pointer("/spec/ports/0/nodePort")
                .and_then(Value::as_i64)
                .unwrap()
        );
        // eTP back to Cluster: the health check port is cleared and freed after the write.
        let mut cluster = lb.clone();
        cluster["spec"]["externalTrafficPolicy"] = json!("Cluster");
        let (r, freed) = a.on_update(&lb, &mut cluster, false).await.unwrap();
        assert!(r.keys.is_empty());
        assert!(cluster.pointer("/spec/healthCheckNodePort").is_none());
        assert_eq!(freed, vec![format!("{PORT_PREFIX}{hc}")]);

        // ClusterIP -> NodePort on update allocates the node port then.
        let mut plain = svc(
            "plain",
            json!({"type": "ClusterIP", "ports": [{"port": 80}]}),
        );
        let _ = a.on_create(&mut plain, false).await.unwrap();
        let mut to_np = plain.clone();
        to_np["spec"]["type"] = json!("NodePort");
        let (r, freed) = a.on_update(&plain, &mut to_np, false).await.unwrap();
        assert_eq!(r.keys.len(), 1, "only the new node port: {:?}", r.keys);
        assert!(freed.is_empty());
        assert!(to_np
            .pointer("/spec/ports/0/nodePort")
            .and_then(Value::as_i64)
            .is_some());
    }

    #[tokio::test]
    async fn repair_restores_removes_and_reports() {
        let (_d, store) = store().await;
        let a = alloc(&store, "10.43.0.0/16");
        // Two Services written without reservations (an older skiff), one IP shared.
        let one = svc(
            "one",
            json!({"clusterIP": "10.43.1.1", "ports": [{"port": 80, "nodePort": 30500}]}),
        );
        let two = svc("twotwo", json!({"clusterIP": "10.43.1.1"}));
        commit(&store, &one).await;
        commit(&store, &two).await;
        store
            .create(
                &format!("{IP_PREFIX}10.43.9.9"),
                Bytes::from(
                    serde_json::to_vec(
                        &json!({"namespace": "default", "name": "gone", "uid": "g"}),
                    )
                    .unwrap(),
                ),
            )
            .await
            .unwrap();
        let r = a.repair().await.unwrap();
        assert_eq!(r.leaked, vec![format!("{IP_PREFIX}10.43.9.9")]);
        assert_eq!(
            r.restored,
            vec![
                format!("{IP_PREFIX}10.43.1.1"),
                format!("{PORT_PREFIX}30500")
            ]
        );
        assert_eq!(r.duplicates.len(), 1, "{:?}", r.duplicates);
        assert!(
            r.duplicates[0].contains("default/one") && r.duplicates[0].contains("default/twotwo")
        );
        // Idempotent: a second pass finds only the duplicate again.
        let again = a.repair().await.unwrap();
        assert!(again.restored.is_empty() && again.leaked.is_empty());
        // Deleting the holder frees the value.
        a.on_delete(&one).await;
        assert!(store
            .get(&format!("{PORT_PREFIX}30500"))
            .await
            .unwrap()
            .is_none());
    }

    /// Two servers on one store (HA): each allocates from its own hint; values the other
    /// took are never handed out twice, values the other freed are found once the range
    /// looks full.
    #[tokio::test]
    async fn servers_sharing_a_store_never_hand_out_a_value_twice() {
        let (_d, store) = store().await;
        // 8 - network - broadcast - kubernetes = 5 dynamic addresses.
        let (a, b) = (alloc(&store, "10.96.0.0/29"), alloc(&store, "10.96.0.0/29"));
        let mut held: Vec<Value> = Vec::new();
        let mut ips = HashSet::new();
        for i in 0..5 {
            // Alternate, so each server's hint (loaded on its first allocation) misses
            // what the other took since.
            let who = if i % 2 == 0 { &a } else { &b };
            let mut s = svc(&format!("s{i}"), json!({}));
            create(who, &mut s).await.unwrap();
            assert!(ips.insert(str_at(&s, "/spec/clusterIP").to_string()), "{s}");
            held.push(s);
        }
        for who in [&a, &b] {
            let mut s = svc("full", json!({}));
            let e = create(who, &mut s).await.unwrap_err();
            assert!(e.message().contains("range is full"), "{e:?}");
        }
        // `b` frees an address; `a` still believes it taken, reloads and finds it.
        let freed = held.remove(0);
        b.on_delete(&freed).await;
        let mut s = svc("again", json!({}));
        create(&a, &mut s).await.unwrap();
        assert_eq!(
            str_at(&s, "/spec/clusterIP"),
            str_at(&freed, "/spec/clusterIP")
        );
    }

    /// A store that counts LISTs.
    struct CountingStore {
        inner: Arc<dyn Store>,
        lists: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Store for CountingStore {
        async fn create(&self, key: &str, value: Bytes) -> skiff_store::Result<u64> {
            self.inner.create(key, value).await
        }
        async fn create_all(&self, kvs: Vec<(String, Bytes)>) -> skiff_store::Result<Vec<u64>> {
            self.inner.create_all(kvs).await
        }
        async fn update(
            &self,
            key: &str,
            value: Bytes,
            expected: Option<u64>,
        ) -> skiff_store::Result<u64> {
            self.inner.update(key, value, expected).await
        }
        async fn delete(
            &self,
            key: &str,
            expected: Option<u64>,
        ) -> skiff_store::Result<(u64, skiff_store::KeyValue)> {
            self.inner.delete(key, expected).await
        }
        async fn get(&self, key: &str) -> skiff_store::Result<Option<skiff_store::KeyValue>> {
            self.inner.get(key).await
        }
        async fn get_at(
            &self,
            key: &str,
            revision: u64,
        ) -> skiff_store::Result<Option<skiff_store::KeyValue>> {
            self.inner.get_at(key, revision).await
        }
        async fn list(
            &self,
            prefix: &str,
            options: ListOptions,
        ) -> skiff_store::Result<skiff_store::ListResult> {
            self.lists
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.list(prefix, options).await
        }
        async fn watch(
            &self,
            prefix: &str,
            from: u64,
        ) -> skiff_store::Result<skiff_store::WatchStream> {
            self.inner.watch(prefix, from).await
        }
        async fn current_revision(&self) -> skiff_store::Result<u64> {
            self.inner.current_revision().await
        }
        async fn compacted_revision(&self) -> skiff_store::Result<u64> {
            self.inner.compacted_revision().await
        }
        async fn compact(&self, revision: u64) -> skiff_store::Result<()> {
            self.inner.compact(revision).await
        }
    }

    /// Allocating does not read every reservation per Service: that made creates slow
    /// down linearly with the number of Services.
    #[tokio::test]
    async fn allocation_cost_does_not_grow_with_the_services() {
        let (_d, inner) = store().await;
        let counting = Arc::new(CountingStore {
            inner,
            lists: Default::default(),
        });
        let store: Arc<dyn Store> = counting.clone();
        let a = alloc(&store, "10.43.0.0/16");
        for i in 0..200 {
            let mut s = svc(
                &format!("n{i}"),
                json!({"type": "NodePort", "ports": [{"port": 80}]}),
            );
            create(&a, &mut s).await.unwrap();
        }
        // One load of each hint (IPs, node ports).
        assert_eq!(counting.lists.load(std::sync::atomic::Ordering::Relaxed), 2);
        // A repair pass reloads them on the next allocation.
        a.repair().await.unwrap();
        let before = counting.lists.load(std::sync::atomic::Ordering::Relaxed);
        let mut s = svc(
            "after-repair",
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
        );
        create(&a, &mut s).await.unwrap();
        assert_eq!(
            counting.lists.load(std::sync::atomic::Ordering::Relaxed),
            before + 2
        );
    }
}
