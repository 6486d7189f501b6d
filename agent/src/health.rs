//! Health endpoints in kube-proxy's formats (pkg/proxy/healthcheck), so load balancers,
//! probes and dashboards written for kube-proxy work unchanged:
//! - `/healthz` and `/livez` on `--healthz-bind-address` (default 0.0.0.0:10256):
//!   `{"lastUpdated": "...","currentTime": "...", "nodeEligible": true}`. Unhealthy (503)
//!   when a change from the API has waited longer than the timeout without being
//!   programmed; `/healthz` is also 503 when the node is being deleted or is tainted
//!   `ToBeDeletedByClusterAutoscaler` (nodeEligible false), so load balancers drain it.
//! - one HTTP server per `healthCheckNodePort` (LoadBalancer services with
//!   externalTrafficPolicy=Local): `{"service": {...}, "localEndpoints": N,
//!   "serviceProxyHealthy": true}`, 200 iff N > 0 and the proxy is healthy. Servers start
//!   and stop as services come and go ([`HealthCheckServers::update`]).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use crate::model::HealthCheck;

#[derive(Debug, Default)]
struct State {
    last_updated: Option<SystemTime>,
    oldest_pending: Option<SystemTime>,
    node_eligible: bool,
}

/// The proxy's health: kube-proxy's ProxyHealthServer rule.
#[derive(Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    state: Mutex<State>,
}

/// Go's `time.Time.String()` for a UTC time (what kube-proxy prints with `%q`):
/// `2006-01-02 15:04:05.999999999 +0000 UTC`, trailing zeros of the fraction dropped.
pub fn go_time(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let ts = k8s_openapi::jiff::Timestamp::from_second(d.as_secs() as i64)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let mut out = ts.strftime("%Y-%m-%d %H:%M:%S").to_string();
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

fn json_response(code: StatusCode, body: String) -> Response {
    let mut r = (code, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

impl ProxyHealth {
    /// `timeout`: how long a received change may wait for programming (kube-proxy: twice
    /// its sync period).
    pub fn new(timeout: Duration) -> Arc<ProxyHealth> {
        Arc::new(ProxyHealth {
            timeout,
            state: Mutex::new(State {
                // Eligible while starting up, until a Node event says otherwise.
                node_eligible: true,
                ..Default::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change arrived that is not programmed yet (kube-proxy's QueuedUpdate).
    pub fn queued(&self) {
        let mut s = self.lock();
        if s.oldest_pending.is_none() {
            s.oldest_pending = Some(SystemTime::now());
        }
    }

    /// Everything received is programmed (kube-proxy's Updated).
    pub fn updated(&self) {
        let mut s = self.lock();
        s.oldest_pending = None;
        s.last_updated = Some(SystemTime::now());
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.lock().node_eligible = eligible;
    }

    pub fn last_updated(&self) -> Option<SystemTime> {
        self.lock().last_updated
    }

    /// Healthy unless a change has been pending for longer than the timeout.
    pub fn is_healthy(&self, now: SystemTime) -> bool {
        let s = self.lock();
        match s.oldest_pending {
            None => true,
            Some(t) => now.duration_since(t).unwrap_or_default() < self.timeout,
        }
    }

    /// The `/healthz` answer at `now` (`livez`: without node eligibility).
    pub fn answer(&self, now: SystemTime, livez: bool) -> (StatusCode, String) {
        let healthy = self.is_healthy(now);
        let (last, eligible) = {
            let s = self.lock();
            (s.last_updated, s.node_eligible)
        };
        let ok = healthy && (livez || eligible);
        // kube-proxy reports lastUpdated = now while healthy (compatibility with releases
        // where it was the last sync-loop run) and the real last update otherwise.
        let last = if ok {
            go_time(now)
        } else {
            last.map(go_time)
                .unwrap_or_else(|| "0001-01-01 00:00:00 +0000 UTC".into())
        };
        let body = if livez {
            format!(
                r#"{{"lastUpdated": {last:?},"currentTime": {:?}}}"#,
                go_time(now)
            )
        } else {
            format!(
                r#"{{"lastUpdated": {last:?},"currentTime": {:?}, "nodeEligible": {eligible}}}"#,
                go_time(now)
            )
        };
        let code = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, body)
    }
}

/// The `/healthz` + `/livez` router.
pub fn healthz_router(health: Arc<ProxyHealth>) -> Router {
    let h2 = health.clone();
    Router::new()
        .route(
            "/healthz",
            get(move || {
                let health = health.clone();
                async move {
                    let (code, body) = health.answer(SystemTime::now(), false);
                    json_response(code, body)
                }
            }),
        )
        .route(
            "/livez",
            get(move || {
                let health = h2.clone();
                async move {
                    let (code, body) = health.answer(SystemTime::now(), true);
                    json_response(code, body)
                }
            }),
        )
}

/// Serves `router` on `listener` until the task is dropped or aborted.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

/// Binds `addr` (with SO_REUSEADDR, as Go's net.Listen does) for one of the agent's
/// servers.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
    socket.listen(1024)
}

/// The body and code of a service health check (kube-proxy's hcHandler).
pub fn service_answer(check: &HealthCheck, proxy_healthy: bool) -> (StatusCode, String) {
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        check.service.0, check.service.1, check.local_endpoints, proxy_healthy
    );
    let code = if check.local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

struct Server {
    check: Arc<Mutex<HealthCheck>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The healthCheckNodePort servers. Must be used inside a tokio runtime (servers are
/// spawned tasks); dropping it stops them all.
pub struct HealthCheckServers {
    addresses: Vec<IpAddr>,
    proxy: Arc<ProxyHealth>,
    servers: BTreeMap<u16, Server>,
}

impl HealthCheckServers {
    /// Servers listen on each of `addresses` (kube-proxy: the node port addresses;
    /// `0.0.0.0` for all).
    pub fn new(addresses: Vec<IpAddr>, proxy: Arc<ProxyHealth>) -> HealthCheckServers {
        HealthCheckServers {
            addresses,
            proxy,
            servers: BTreeMap::new(),
        }
    }

    /// Ports being served.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }

    /// Serves exactly `checks`: new ports start, gone ports stop, counts of the others
    /// change in place. Returns the ports that could not be bound (retried next update).
    pub fn update(&mut self, checks: &[HealthCheck]) -> Vec<String> {
        let mut errors = Vec::new();
        let wanted: BTreeMap<u16, &HealthCheck> = checks.iter().map(|c| (c.port, c)).collect();
        self.servers.retain(|port, _| wanted.contains_key(port));
        for (port, check) in wanted {
            if let Some(s) = self.servers.get(&port) {
                *s.check.lock().unwrap_or_else(|p| p.into_inner()) = check.clone();
                continue;
            }
            let shared = Arc::new(Mutex::new(check.clone()));
            let router = self.router(shared.clone());
            let mut tasks = Vec::new();
            let mut failed = None;
            for ip in &self.addresses {
                match bind(SocketAddr::new(*ip, port)) {
                    Ok(l) => {
                        let r = router.clone();
                        tasks.push(tokio::spawn(async move {
                            let _ = serve(l, r).await;
                        }));
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let server = Server {
                check: shared,
                tasks,
            };
            match failed {
                // Like kube-proxy: close what opened, report, retry at the next update.
                Some(e) => errors.push(format!(
                    "health check node port {port} of {}/{}: {e}",
                    check.service.0, check.service.1
                )),
                None => {
                    self.servers.insert(port, server);
                }
            }
        }
        errors
    }

    fn router(&self, check: Arc<Mutex<HealthCheck>>) -> Router {
        let proxy = self.proxy.clone();
        // kube-proxy answers every path on a health check port.
        Router::new().fallback(move || {
            let check = check.clone();
            let proxy = proxy.clone();
            async move {
                let c = check.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let (code, body) = service_answer(&c, proxy.is_healthy(SystemTime::now()));
                let mut r = json_response(code, body);
                // kube-proxy's hint for weighted load balancers.
                if let Ok(v) = HeaderValue::from_str(&c.local_endpoints.to_string()) {
                    r.headers_mut()
                        .insert("X-Load-Balancing-Endpoint-Weight", v);
                }
                r
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
        assert_eq!(go_time(t), "2023-11-14 22:13:20.12 +0000 UTC");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(go_time(t), "2023-11-14 22:13:20 +0000 UTC");
    }

    #[test]
    fn unhealthy_only_when_a_change_waits_too_long() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        let now = SystemTime::now();
        assert_eq!(h.answer(now, false).0, StatusCode::OK, "healthy at start");
        h.queued();
        assert_eq!(h.answer(now, false).0, StatusCode::OK, "not late yet");
        let later = now + Duration::from_secs(61);
        let (code, body) = h.answer(later, false);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"nodeEligible\": true"), "{body}");
        h.updated();
        assert_eq!(h.answer(later, false).0, StatusCode::OK);
        h.set_node_eligible(false);
        let (code, body) = h.answer(later, false);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"nodeEligible\": false"), "{body}");
        assert_eq!(
            h.answer(later, true).0,
            StatusCode::OK,
            "livez ignores the node"
        );
    }

    #[test]
    fn a_busy_port_is_reported_and_bound_on_a_later_update() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = busy.local_addr().unwrap().port();
            let mut servers = HealthCheckServers::new(
                vec![std::net::Ipv4Addr::LOCALHOST.into()],
                ProxyHealth::new(Duration::from_secs(60)),
            );
            let check = HealthCheck {
                port,
                service: ("default".into(), "lb".into()),
                local_endpoints: 1,
            };
            let errors = servers.update(std::slice::from_ref(&check));
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].contains(&port.to_string()) && errors[0].contains("default/lb"));
            assert!(servers.ports().is_empty());
            drop(busy);
            assert!(servers.update(std::slice::from_ref(&check)).is_empty());
            assert_eq!(servers.ports(), [port]);
            servers.update(&[]);
            assert!(servers.ports().is_empty());
        });
    }

    #[test]
    fn service_answers() {
        let mut c = HealthCheck {
            port: 31000,
            service: ("default".into(), "lb".into()),
            local_endpoints: 2,
        };
        let (code, body) = service_answer(&c, true);
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"service": {"namespace": "default", "name": "lb"}, "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        c.local_endpoints = 0;
        assert_eq!(service_answer(&c, true).0, StatusCode::SERVICE_UNAVAILABLE);
        c.local_endpoints = 1;
        assert_eq!(service_answer(&c, false).0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
