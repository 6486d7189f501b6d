//! The whole cluster on one machine (skiff-cluster: 3 simulated nodes on a bridge, the
//! control plane, one agent per node running its pods), driven with the real kubectl and
//! real traffic: the examples' Deployment behind ClusterIP, NodePort and LoadBalancer
//! Services, reached from a pod, from a node and from an external client and spread over
//! the replicas; scaling 3 → 10 → 2; a Job to completion; a DaemonSet pod per node; a
//! rolling update and its undo under load without one failed request; a killed container
//! restarted; a node taken away, its pods evicted and recreated elsewhere.
//!
//! All traffic stays inside the cluster's namespaces (172.31.0.0/24, the pod range
//! 10.42.0.0/16 and service range 10.43.0.0/16 exist only there); the host talks only to
//! the API server's forwarder on 127.0.0.1.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use skiff_cluster::{Cluster, Options};
use skiff_tests::{apiserver::sibling_binary, privilege::require_privileges};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

struct T {
    c: Cluster,
}

impl T {
    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.c.kubectl_run(args)
    }

    fn json(&self, args: &[&str]) -> Result<Value, String> {
        self.c.kubectl_json(args)
    }

    fn eventually<R>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl FnMut() -> Result<R, String>,
    ) -> R {
        self.c.eventually(what, timeout, f)
    }

    /// The Ready pods with label `app`: (name, uid, node, IP).
    fn ready_pods(&self, app: &str) -> Result<Vec<(String, String, String, Ipv4Addr)>, String> {
        let list = self.json(&["get", "pods", "-l", &format!("app={app}")])?;
        let mut out = Vec::new();
        for p in list["items"].as_array().into_iter().flatten() {
            if !p["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let ip = p["status"]["podIP"].as_str().and_then(|s| s.parse().ok());
            if let (true, Some(ip)) = (ready, ip) {
                out.push((
                    p["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                    p["metadata"]["uid"].as_str().unwrap_or("").to_owned(),
                    p["spec"]["nodeName"].as_str().unwrap_or("").to_owned(),
                    ip,
                ));
            }
        }
        Ok(out)
    }

    /// Waits until exactly `n` pods of `app` exist and all are Ready.
    fn wait_replicas(
        &self,
        app: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<(String, String, String, Ipv4Addr)> {
        self.eventually(&format!("{n} Ready {app} pods"), timeout, || {
            let all = self.json(&["get", "pods", "-l", &format!("app={app}")])?;
            let total = all["items"].as_array().map_or(0, Vec::len);
            let ready = self.ready_pods(app)?;
            if total == n && ready.len() == n {
                Ok(ready)
            } else {
                Err(format!("{total} pods, {} Ready", ready.len()))
            }
        })
    }

    /// Who answered `n` requests from the external client to `addr`.
    fn answers_outside(&self, addr: SocketAddrV4, n: usize) -> Result<BTreeSet<String>, String> {
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            let body = self
                .c
                .http_get_in(&self.c.external_netns(), addr, Duration::from_secs(3))
                .map_err(|e| format!("{e:#}"))?;
            seen.insert(answerer(&body)?);
        }
        Ok(seen)
    }
}

/// The pod name in a web answer ("<pod> saw <client>").
fn answerer(body: &str) -> Result<String, String> {
    body.split_whitespace()
        .next()
        .filter(|w| w.starts_with("web-"))
        .map(str::to_owned)
        .ok_or_else(|| format!("not a web answer: {body:?}"))
}

/// `curl` of `url` `n` times (one connection each); the answerers.
fn curl(n: usize, url: &str) -> Command {
    let mut c = Command::new("curl");
    c.args(["-s", "-S", "--max-time", "3", "-H", "Connection: close"]);
    for _ in 0..n {
        c.arg(url);
    }
    c
}

fn answerers(out: std::process::Output) -> Result<Vec<String>, String> {
    if !out.status.success() {
        return Err(format!(
            "curl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(answerer)
        .collect()
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

#[test]
fn three_nodes_serve_a_deployment_on_every_service_type_scale_and_run_jobs() {
    require_privileges();
    let bin_dir = sibling_binary("skiff-agent")
        .parent()
        .unwrap()
        .to_path_buf();
    for b in ["skiff-controlplane", "skiff-cni"] {
        sibling_binary(b);
    }
    let mut opts = Options::new(&format!("t{}", std::process::id()), 3, &bin_dir);
    opts.progress = |l| eprintln!("cluster: {l}");
    // Node loss is noticed within seconds: 1 s Lease renewals, 10 s grace, 5 s eviction.
    opts.agent_args = ["--node-lease-renew-secs", "1"].map(String::from).to_vec();
    opts.controlplane_args = [
        "--node-monitor-grace-period",
        "10s",
        "--pod-eviction-timeout",
        "5s",
    ]
    .map(String::from)
    .to_vec();
    let t = T {
        c: Cluster::start(opts).expect("starting the cluster"),
    };
    eprintln!("cluster: Ready after {:.1?}", t.c.ready_after());

    // Every Node has a podCIDR inside the cluster CIDR.
    let nodes = t.json(&["get", "nodes"]).unwrap();
    let cidrs: BTreeMap<String, String> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap().to_owned(),
                n["spec"]["podCIDR"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(cidrs.len(), 3, "{cidrs:?}");

    let ex = examples();
    for f in ["web.yaml", "job.yaml", "daemonset.yaml"] {
        t.kubectl(&["apply", "-f", ex.join(f).to_str().unwrap()])
            .unwrap();
    }

    // 3 replicas Ready, each with an IP from its node's podCIDR.
    let pods = t.wait_replicas("web", 3, Duration::from_secs(60));
    for (name, _, node, ip) in &pods {
        let cidr = &cidrs[node];
        assert!(
            in_cidr(*ip, cidr),
            "{name} on {node} has {ip}, outside {cidr}"
        );
    }
    let names: BTreeSet<String> = pods.iter().map(|p| p.0.clone()).collect();

    // The Services.
    let svc = t.json(&["get", "svc", "web"]).unwrap();
    let cluster_ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    assert!(in_cidr(cluster_ip, skiff_cluster::SERVICE_CIDR));
    let np = t.json(&["get", "svc", "web-nodeport"]).unwrap();
    assert_eq!(np["spec"]["ports"][0]["nodePort"], 30080);
    let lb_ip: Ipv4Addr = t.eventually("web-lb's address", Duration::from_secs(20), || {
        let lb = t.json(&["get", "svc", "web-lb"])?;
        lb["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no ingress yet: {}", lb["status"]))
    });
    assert!(in_cidr(lb_ip, skiff_cluster::LB_POOL), "{lb_ip}");

    // Endpoints are programmed asynchronously on every node: poll until every replica has
    // answered from each vantage point (30 requests miss one of 3 with p ≈ 2e-5).
    let spread = |what: &str, f: &dyn Fn() -> Result<Vec<String>, String>| {
        t.eventually(what, Duration::from_secs(20), || {
            let seen: BTreeSet<String> = f()?.into_iter().collect();
            if seen == names {
                Ok(())
            } else {
                Err(format!("answered by {seen:?}, replicas {names:?}"))
            }
        })
    };
    let client_pod = &pods[0];
    let url = format!("http://{cluster_ip}/");
    spread("ClusterIP from a pod to reach every replica", &|| {
        answerers(
            t.c.run_in_pod(&client_pod.1, "web", &mut curl(30, &url))
                .map_err(|e| format!("{e:#}"))?,
        )
    });
    // Cluster DNS from a pod: the pod's resolv.conf (in its mount namespace) names the
    // kube-dns ClusterIP and the search path, and a node's DNS server answers through the
    // service datapath. `web` resolves via `web.default.svc.cluster.local`.
    t.eventually(
        "`web` to resolve from a pod",
        Duration::from_secs(20),
        || {
            let pid =
                t.c.pod_pid(&client_pod.1, "web")
                    .map_err(|e| format!("{e:#}"))?;
            let out =
                t.c.run_in_pod(
                    &client_pod.1,
                    "web",
                    Command::new("nsenter")
                        .arg(format!("--mount=/proc/{pid}/ns/mnt"))
                        .args(["getent", "hosts", "web"]),
                )
                .map_err(|e| format!("{e:#}"))?;
            let answer = String::from_utf8_lossy(&out.stdout).into_owned();
            if answer.starts_with(&format!("{cluster_ip} "))
                && answer.contains("web.default.svc.cluster.local")
            {
                Ok(())
            } else {
                Err(format!(
                    "getent hosts web: {answer:?} {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        },
    );
    spread("ClusterIP from node-2 to reach every replica", &|| {
        answerers(
            t.c.run_on_node(1, &mut curl(30, &url))
                .map_err(|e| format!("{e:#}"))?,
        )
    });
    for (i, n) in t.c.nodes().iter().enumerate() {
        let addr = SocketAddrV4::new(n.ip, 30080);
        spread(&format!("NodePort on node-{} from outside", i + 1), &|| {
            t.answers_outside(addr, 30).map(|s| s.into_iter().collect())
        });
    }
    spread("the LoadBalancer IP from outside", &|| {
        t.answers_outside(SocketAddrV4::new(lb_ip, 80), 30)
            .map(|s| s.into_iter().collect())
    });

    // Scale 3 → 10 → 2; the Service follows.
    t.kubectl(&["scale", "deployment/web", "--replicas=10"])
        .unwrap();
    let ten = t.wait_replicas("web", 10, Duration::from_secs(90));
    let used: BTreeSet<&String> = ten.iter().map(|p| &p.2).collect();
    assert_eq!(used.len(), 3, "10 replicas should use every node: {ten:?}");
    for (name, _, node, ip) in &ten {
        assert!(in_cidr(*ip, &cidrs[node]), "{name} on {node} has {ip}");
    }
    t.kubectl(&["scale", "deployment/web", "--replicas=2"])
        .unwrap();
    let two = t.wait_replicas("web", 2, Duration::from_secs(60));
    let two_names: BTreeSet<String> = two.iter().map(|p| p.0.clone()).collect();
    t.eventually(
        "only the 2 remaining replicas answer on the LB IP",
        Duration::from_secs(20),
        || {
            let seen = t.answers_outside(SocketAddrV4::new(lb_ip, 80), 30)?;
            if seen == two_names {
                Ok(())
            } else {
                Err(format!("answered by {seen:?}, replicas {two_names:?}"))
            }
        },
    );

    // The Job ran to completion, and printed pi.
    t.eventually("Job pi Complete", Duration::from_secs(60), || {
        let job = t.json(&["get", "job", "pi"])?;
        let complete = job["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Complete" && c["status"] == "True");
        if complete && job["status"]["succeeded"] == 1 {
            Ok(())
        } else {
            Err(format!("status {}", job["status"]))
        }
    });
    let logs: Vec<String> =
        t.c.nodes()
            .iter()
            .flat_map(|n| {
                std::fs::read_dir(&n.pod_log_dir)
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .filter(|e| e.file_name().to_string_lossy().starts_with("default_pi-"))
            .filter_map(|e| std::fs::read_to_string(e.path().join("pi/0.log")).ok())
            .collect();
    assert!(
        logs.iter().any(|l| l.contains("3.14159265358979")),
        "the Job's log should hold pi: {logs:?}"
    );

    // A DaemonSet pod on every node.
    let helpers = t.eventually(
        "a node-helper pod Running on every node",
        Duration::from_secs(60),
        || {
            let list = t.json(&["get", "pods", "-l", "app=node-helper"])?;
            let running: BTreeSet<String> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["status"]["phase"] == "Running")
                .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
                .collect();
            if running.len() == 3 {
                Ok(running)
            } else {
                Err(format!("running on {running:?}"))
            }
        },
    );
    assert_eq!(helpers, cidrs.keys().cloned().collect());

    // A rolling update (3 replicas again) under constant load from outside (the old pods
    // keep serving for 5 s after SIGTERM while their endpoints are withdrawn), then
    // `rollout undo` the same way.
    t.kubectl(&["scale", "deployment/web", "--replicas=3"])
        .unwrap();
    let before: BTreeSet<String> = t
        .wait_replicas("web", 3, Duration::from_secs(60))
        .into_iter()
        .map(|p| p.0)
        .collect();
    let lb = SocketAddrV4::new(lb_ip, 80);
    t.eventually(
        "the 3 replicas behind the LB IP",
        Duration::from_secs(20),
        || {
            let seen = t.answers_outside(lb, 30)?;
            (seen == before)
                .then_some(())
                .ok_or(format!("{seen:?} vs {before:?}"))
        },
    );
    let midstream = || midstream_flows(&t.c);
    let under_load = |what: &str, change: &[&str]| {
        let midstream_before = midstream();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (ok, failures) = std::thread::scope(|s| {
            let load = s.spawn(|| {
                let (mut ok, mut failures) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match t
                        .c
                        .http_get_in(&t.c.external_netns(), lb, Duration::from_secs(3))
                    {
                        Ok(_) => ok += 1,
                        Err(e) => failures.push(format!("{e:#}")),
                    }
                }
                (ok, failures)
            });
            t.kubectl(change).unwrap();
            t.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"])
                .unwrap();
            // Until the last old pod is gone, not only replaced.
            t.wait_replicas("web", 3, Duration::from_secs(60));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            load.join().unwrap()
        });
        let midstream_flows = midstream() - midstream_before;
        eprintln!(
            "{what}: {ok} requests answered, {} failed: {failures:?}; {midstream_flows} flows \
             balanced midstream",
            failures.len()
        );
        assert!(ok > 20, "{what}: too few requests to mean anything ({ok})");
        // Zero, as issue 8 asks. The failures this test used to see were reused 5-tuples
        // (the client's ports wrap every ~14k connections): a stale conntrack entry pinned
        // a new connection to a terminating pod (fixed: `service::reopens`, the pair's
        // close timeout), and the purge of a departed backend's flows deleted a new flow
        // that had just reused a walked tuple, so its next packet was balanced midstream
        // onto a pod that reset it (fixed: `delete_conntrack_if`). The midstream count
        // says whether any flow lost its state, failed request or not.
        assert!(
            failures.is_empty() && midstream_flows == 0.0,
            "{what}: {} of {} requests failed: {failures:?}; {midstream_flows} flows balanced \
             midstream",
            failures.len(),
            ok as usize + failures.len()
        );
    };
    under_load(
        "rolling update",
        &[
            "patch",
            "deployment/web",
            "--type=merge",
            "-p",
            r#"{"spec":{"template":{"metadata":{"annotations":{"skiff.test/rev":"2"}}}}}"#,
        ],
    );
    let after: BTreeSet<String> = t
        .ready_pods("web")
        .unwrap()
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert!(
        before.is_disjoint(&after),
        "every pod replaced: {before:?} → {after:?}"
    );
    under_load("rollout undo", &["rollout", "undo", "deployment/web"]);
    // Stress knob for hunting rare rollout failures: SKIFF_EXTRA_ROLLOUTS=N more rolling
    // updates under the same load and the same bound (0 by default, in CI).
    let extra: u32 = std::env::var("SKIFF_EXTRA_ROLLOUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for i in 0..extra {
        let patch = format!(
            r#"{{"spec":{{"template":{{"metadata":{{"annotations":{{"skiff.test/rev":"x{i}"}}}}}}}}}}"#
        );
        under_load(
            &format!("extra rollout {}", i + 1),
            &["patch", "deployment/web", "--type=merge", "-p", &patch],
        );
    }

    // Kill a container's process: the runtime restarts it (restartCount 1, Ready again).
    let (victim, uid, node, _) = t.ready_pods("web").unwrap().remove(0);
    let cg = t.c.nodes()[node.trim_start_matches("node-").parse::<usize>().unwrap() - 1]
        .cgroup
        .join(format!("skiff-pod-{uid}/web/cgroup.procs"));
    let pids = std::fs::read_to_string(&cg).unwrap();
    for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2) of the pod's process, found in its cgroup just now.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    t.eventually(
        &format!("{victim} restarted and Ready"),
        Duration::from_secs(30),
        || {
            let p = t.json(&["get", "pod", &victim])?;
            let cs = &p["status"]["containerStatuses"][0];
            if cs["restartCount"].as_i64() >= Some(1) && cs["ready"] == true {
                Ok(())
            } else {
                Err(format!("{cs}"))
            }
        },
    );

    // `kill -9` every agent in turn under constant load from outside: the pinned datapath
    // keeps translating while no agent runs, the pods keep running (no restart, no new
    // pod), and each restarted agent adopts its pods' containers.
    let mut t = t;
    let midstream_before = midstream_flows(&t.c);
    let pods_before = web_restart_counts(&t);
    let ext = t.c.external_netns();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let started = std::time::Instant::now();
    let (ok, failures) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let (mut ok, mut failures) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = started.elapsed();
                let r = skiff_cluster::sys::in_netns(&ext, || {
                    skiff_cluster::http_get(lb, Duration::from_secs(3))
                });
                match r.and_then(|r| r) {
                    Ok(_) => ok += 1,
                    Err(e) => failures.push(format!("at {sent:.2?}: {e:#}")),
                }
            }
            (ok, failures)
        });
        for i in 0..3 {
            eprintln!(
                "at {:.2?}: kill -9 the agent of node {}",
                started.elapsed(),
                i + 1
            );
            t.c.kill_agent(i).unwrap();
            // A moment with no agent at all on the node.
            std::thread::sleep(Duration::from_millis(500));
            t.c.restart_agent(i, Duration::from_secs(60)).unwrap();
            eprintln!(
                "at {:.2?}: agent of node {} running pods again",
                started.elapsed(),
                i + 1
            );
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        load.join().unwrap()
    });
    let lost = midstream_flows(&t.c) - midstream_before;
    eprintln!(
        "agents killed and restarted: {ok} requests answered, {} failed: {failures:?}; {lost} \
         flows balanced midstream",
        failures.len(),
    );
    assert_eq!(
        lost, 0.0,
        "flows lost their conntrack state while agents restarted"
    );
    assert!(ok > 20, "too few requests to mean anything ({ok})");
    assert!(
        failures.is_empty(),
        "requests failed while agents were killed: {failures:?}"
    );
    assert_eq!(
        web_restart_counts(&t),
        pods_before,
        "the same pods, not restarted, and Ready throughout (an adopted pod keeps its \
         readiness: no endpoint flap)"
    );
    for n in t.c.nodes() {
        let log = strip_ansi(&std::fs::read_to_string(&n.log).unwrap());
        let restarted = log.rsplit("running the pods of Node").next().unwrap_or("");
        assert!(
            !restarted.contains("adopted=false"),
            "{}: the restarted agent started a container afresh instead of adopting it",
            n.name
        );
        // Every pod it adopted has its container taken over (probed, supervised) again.
        assert_eq!(
            restarted
                .matches("adopting the pod an earlier runtime left")
                .count(),
            restarted.matches("adopted=true").count(),
            "{}: an adopted pod's container was never taken over:\n{restarted}",
            n.name
        );
    }
    t.wait_replicas("web", 3, Duration::from_secs(30));

    // Take node-3 away (agent and pods killed, link down): after the grace period it is
    // unreachable (tainted, its pods not ready, so their endpoints go), after the eviction
    // timeout its pods are evicted and recreated on the other nodes, and the Service is
    // answered by those.
    t.c.kill_node(2).unwrap();
    let taken = Instant::now();
    t.eventually(
        "node-3 tainted unreachable",
        Duration::from_secs(40),
        || {
            let n = t.json(&["get", "node", "node-3"])?;
            let tainted = n["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["key"] == "node.kubernetes.io/unreachable");
            tainted
                .then_some(())
                .ok_or(format!("taints {}", n["spec"]["taints"]))
        },
    );
    let survivors: BTreeSet<String> = t.eventually(
        "3 Ready web pods on node-1 and node-2",
        Duration::from_secs(60),
        || {
            let live: Vec<_> = t
                .ready_pods("web")?
                .into_iter()
                .filter(|p| p.2 != "node-3")
                .collect();
            if live.len() == 3 {
                Ok(live.into_iter().map(|p| p.0).collect())
            } else {
                Err(format!("{live:?}"))
            }
        },
    );
    eprintln!(
        "node-3 taken away: replicas recreated after {:.1?}",
        taken.elapsed()
    );
    for addr in [
        SocketAddrV4::new(lb_ip, 80),
        SocketAddrV4::new(t.c.nodes()[0].ip, 30080),
    ] {
        t.eventually(
            &format!("{addr} answered by the surviving replicas"),
            Duration::from_secs(20),
            || {
                let seen = t.answers_outside(addr, 30)?;
                (seen == survivors)
                    .then_some(())
                    .ok_or(format!("{seen:?} vs {survivors:?}"))
            },
        );
    }
}

/// Every web pod with its container's restartCount, sorted.
/// Each web pod's name, restart count, and when its Ready condition last changed (a
/// readiness flap, even a short one, moves that time).
fn web_restart_counts(t: &T) -> Vec<(String, i64, String)> {
    let list = t.json(&["get", "pods", "-l", "app=web"]).unwrap();
    let mut out: Vec<(String, i64, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let ready_since = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map(|c| format!("{}={}", c["status"], c["lastTransitionTime"]))
                .unwrap_or_default();
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                p["status"]["containerStatuses"][0]["restartCount"]
                    .as_i64()
                    .unwrap_or(-1),
                ready_since,
            )
        })
        .collect();
    out.sort();
    out
}

/// `text` without ANSI escape sequences (tracing colours its fields in the agents' logs).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Flows balanced midstream (a TCP packet without SYN and without conntrack state: its
/// backend resets it), summed over the nodes' agents.
fn midstream_flows(c: &skiff_cluster::Cluster) -> f64 {
    (0..c.nodes().len())
        .map(|i| {
            c.agent_metric(i, r#"skiff_flow_events_total{event="midstream_new"}"#)
                .unwrap()
        })
        .sum()
}
