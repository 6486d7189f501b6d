//! Whole-cluster resilience (skiff-cluster, real kubectl, real traffic), each test with its
//! own simulated cluster so they run beside `cluster.rs` and each other:
//! - a failing liveness probe restarts the container (same pod, restartCount up, Ready
//!   again);
//! - externalTrafficPolicy=Local: the backend sees the external client's address, a node
//!   without a local endpoint drops the NodePort's traffic (kube-proxy's rule), and the
//!   healthCheckNodePort answers 200 with the local endpoint count or 503;
//! - session affinity ClientIP pins a client to one backend, without it requests spread;
//! - a node taken away (agent and pods killed, link cut): it goes Unknown, its pods
//!   Ready=False (so their endpoints leave), it gets the unreachable taint, its pods are
//!   recreated elsewhere after the (shortened) eviction timeout; meanwhile clients pinned
//!   (by affinity) to the dead node's backends are the only ones that fail, and only until
//!   those endpoints are withdrawn.
//!
//! All traffic stays inside the clusters' namespaces (see `skiff_cluster`); the host talks
//! only to each API server's forwarder on 127.0.0.1.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use skiff_cluster::{sys, Cluster, Options};
use skiff_tests::{apiserver::sibling_binary, privilege::require_privileges};

const KUBECTL: &str = "/usr/bin/kubectl";

/// An HTTP server answering `/` with "<pod> saw <client address>", `/healthz` with 200
/// until `/fail` was requested once (then 500: a liveness probe on it fails), and on
/// SIGTERM serving on for 2 s before it exits (endpoint withdrawal, as a preStop sleep).
const SERVER: &str = r#"
import http.server, os, signal, threading
pod = os.environ["POD_NAME"]
failed = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: threading.Timer(2.0, os._exit, [0]).start())
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code, body = 200, f"{pod} saw {self.client_address[0]}\n"
        if self.path == "/fail":
            failed.set()
            body = "failing from now on\n"
        elif self.path == "/healthz" and failed.is_set():
            code, body = 500, "failed\n"
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
"#;

/// A Deployment of [`SERVER`] with label `app: <name>`; `extra_spec` is YAML merged into
/// the pod spec (indented for it), `container_extra` into the container.
fn deployment(name: &str, replicas: u32, extra_spec: &str, container_extra: &str) -> String {
    let script: String = SERVER
        .lines()
        .map(|l| format!("              {l}\n"))
        .collect();
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: default
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      terminationGracePeriodSeconds: 5
{extra_spec}      containers:
        - name: server
          image: skiff.local/host
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
          command:
            - python3
            - -c
            - |
{script}          ports:
            - name: http
              containerPort: 8080
          readinessProbe:
            httpGet:
              path: /
              port: 8080
            periodSeconds: 1
{container_extra}"#
    )
}

/// A Service selecting `app: <app>`, port 80 → http; `extra` is YAML for its spec.
fn service(name: &str, app: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  selector:
    app: {app}
{extra}  ports:
    - name: http
      port: 80
      targetPort: http
"#
    )
}

struct Pod {
    name: String,
    uid: String,
    node: String,
    ip: Ipv4Addr,
}

struct T {
    c: Cluster,
}

impl T {
    fn start(name: &str, nodes: usize, controlplane_args: &[&str]) -> T {
        require_privileges();
        let bin_dir = sibling_binary("skiff-agent")
            .parent()
            .unwrap()
            .to_path_buf();
        for b in ["skiff-controlplane", "skiff-cni"] {
            sibling_binary(b);
        }
        // Unique per test process and test: clusters of parallel tests never share a name.
        let mut opts = Options::new(&format!("{name}{}", std::process::id()), nodes, &bin_dir);
        opts.progress = |l| eprintln!("cluster: {l}");
        opts.agent_args = ["--node-lease-renew-secs", "1"].map(String::from).to_vec();
        opts.controlplane_args = controlplane_args.iter().map(|s| s.to_string()).collect();
        // Other tests compile and run beside this one on a small machine.
        opts.ready_timeout = Duration::from_secs(90);
        let c = Cluster::start(opts).expect("starting the cluster");
        eprintln!("cluster {name}: Ready after {:.1?}", c.ready_after());
        T { c }
    }

    fn apply(&self, yaml: &str) {
        let mut child = Command::new(KUBECTL)
            .env("KUBECONFIG", self.c.kubeconfig())
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
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

    fn pods(&self, app: &str) -> Result<Vec<Value>, String> {
        let list = self.json(&["get", "pods", "-l", &format!("app={app}")])?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until exactly `n` pods of `app` exist, none deleting, all Ready.
    fn wait_ready(&self, app: &str, n: usize, timeout: Duration) -> Vec<Pod> {
        self.eventually(&format!("{n} Ready {app} pods"), timeout, || {
            let all = self.pods(app)?;
            let ready: Vec<Pod> = all.iter().filter_map(ready_pod).collect();
            if all.len() == n && ready.len() == n {
                Ok(ready)
            } else {
                Err(format!("{} pods, {} Ready", all.len(), ready.len()))
            }
        })
    }

    /// One GET from the external client (source address `from`, one of its addresses).
    fn get_outside(&self, from: Ipv4Addr, url: &str, timeout: Duration) -> Result<String, String> {
        get_from(&self.c.external_netns(), from, url, timeout)
    }

    /// `n` GETs of `url` from node `i` (a process in its host cgroup: socket LB applies).
    fn answerers_on_node(&self, i: usize, n: usize, url: &str) -> Result<Vec<String>, String> {
        let mut c = Command::new("curl");
        c.args(["-s", "-S", "--max-time", "3", "-H", "Connection: close"]);
        for _ in 0..n {
            c.arg(url);
        }
        let out = self
            .c
            .run_on_node(i, &mut c)
            .map_err(|e| format!("{e:#}"))?;
        curl_body(out)?.lines().map(answerer).collect()
    }
}

fn ready_pod(p: &Value) -> Option<Pod> {
    if !p["metadata"]["deletionTimestamp"].is_null() || !is_ready(p) {
        return None;
    }
    Some(Pod {
        name: p["metadata"]["name"].as_str()?.to_owned(),
        uid: p["metadata"]["uid"].as_str()?.to_owned(),
        node: p["spec"]["nodeName"].as_str()?.to_owned(),
        ip: p["status"]["podIP"].as_str()?.parse().ok()?,
    })
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// One GET with curl inside network namespace `ns` from source address `from`.
fn get_from(ns: &str, from: Ipv4Addr, url: &str, timeout: Duration) -> Result<String, String> {
    let mut cmd = curl_from(from, url, timeout);
    let _keep = sys::place(
        &mut cmd,
        &sys::Placement {
            netns: Some(ns),
            netns_path: None,
            cgroup: None,
        },
    )
    .map_err(|e| format!("{e:#}"))?;
    curl_body(
        cmd.output()
            .map_err(|e| format!("running curl in {ns}: {e}"))?,
    )
}

fn curl_from(from: Ipv4Addr, url: &str, timeout: Duration) -> Command {
    let mut c = Command::new("curl");
    c.args(["-s", "-S", "-H", "Connection: close"])
        .args(["--interface", &from.to_string()])
        .args([
            "--connect-timeout",
            &format!("{:.1}", timeout.as_secs_f64()),
        ])
        .args(["--max-time", &format!("{:.1}", timeout.as_secs_f64() * 2.0)])
        .arg(url);
    c
}

/// curl's output when it got a 2xx answer (`--fail`-like check on the status line is not
/// needed: the servers answer 200 on `/`).
fn curl_body(out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The pod name in an answer ("<pod> saw <client>").
fn answerer(body: &str) -> Result<String, String> {
    body.split_whitespace()
        .next()
        .filter(|w| w.contains('-'))
        .map(str::to_owned)
        .ok_or_else(|| format!("not a server answer: {body:?}"))
}

/// The client address the backend saw.
fn seen_client(body: &str) -> Result<String, String> {
    match body.split_whitespace().collect::<Vec<_>>()[..] {
        [_, "saw", client] => Ok(client.to_owned()),
        _ => Err(format!("not a server answer: {body:?}")),
    }
}

fn node_index(node: &str) -> usize {
    node.trim_start_matches("node-").parse::<usize>().unwrap() - 1
}

#[test]
fn liveness_restarts_local_traffic_policy_keeps_the_client_address_and_affinity_sticks() {
    let began = Instant::now();
    let t = T::start("ra", 2, &[]);
    let ext = skiff_cluster::EXTERNAL_IP;
    let (n1, n2) = (t.c.nodes()[0].ip, t.c.nodes()[1].ip);

    // One echo replica on node-1, behind an eTP=Local LoadBalancer (so it has a NodePort
    // and a healthCheckNodePort) and an eTP=Cluster NodePort for contrast; three replicas
    // of `sticky` behind a ClientIP-affinity Service and a plain one.
    t.apply(&[
        deployment(
            "echo",
            1,
            "      nodeSelector:\n        kubernetes.io/hostname: node-1\n",
            "",
        ),
        service(
            "echo-local",
            "echo",
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n",
        ),
        service("echo-cluster", "echo", "  type: NodePort\n"),
        deployment("sticky", 3, "", ""),
        service(
            "sticky-affinity",
            "sticky",
            "  type: NodePort\n  sessionAffinity: ClientIP\n",
        ),
        service("sticky-plain", "sticky", "  type: NodePort\n"),
        deployment(
            "live",
            1,
            "",
            "          livenessProbe:\n            httpGet:\n              path: /healthz\n              port: 8080\n            periodSeconds: 1\n            failureThreshold: 2\n",
        ),
    ]
    .join("---\n"));
    let echo = t.wait_ready("echo", 1, Duration::from_secs(60)).remove(0);
    assert_eq!(echo.node, "node-1");
    let sticky = t.wait_ready("sticky", 3, Duration::from_secs(60));
    let sticky_names: BTreeSet<String> = sticky.iter().map(|p| p.name.clone()).collect();

    let svc = |name: &str| t.json(&["get", "svc", name]).unwrap();
    let port = |s: &Value| s["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
    let local = svc("echo-local");
    let local_np = port(&local);
    let hc_port = local["spec"]["healthCheckNodePort"]
        .as_u64()
        .expect("an eTP=Local LoadBalancer gets a healthCheckNodePort") as u16;
    let cluster_np = port(&svc("echo-cluster"));

    // eTP=Local via node-1 (the backend's node): the backend sees the client itself.
    let timeout = Duration::from_secs(2);
    let body = t.eventually(
        "echo-local's NodePort on node-1",
        Duration::from_secs(20),
        || t.get_outside(ext, &format!("http://{n1}:{local_np}/"), timeout),
    );
    assert_eq!(answerer(&body).unwrap(), echo.name);
    assert_eq!(
        seen_client(&body).unwrap(),
        ext.to_string(),
        "eTP=Local must preserve the client address: {body:?}"
    );
    // eTP=Cluster via node-2: forwarded to node-1 and masqueraded to node-2's address
    // (the reply must come back through node-2): the contrast that shows the check above
    // can fail.
    let body = t.eventually(
        "echo-cluster's NodePort on node-2",
        Duration::from_secs(20),
        || t.get_outside(ext, &format!("http://{n2}:{cluster_np}/"), timeout),
    );
    assert_eq!(
        seen_client(&body).unwrap(),
        n2.to_string(),
        "eTP=Cluster via another node is masqueraded: {body:?}"
    );
    // eTP=Local via node-2 (no local endpoint): dropped, as kube-proxy does (no answer, the
    // connection times out), several times so it is not a one-off loss.
    for _ in 0..3 {
        let r = t.get_outside(
            ext,
            &format!("http://{n2}:{local_np}/"),
            Duration::from_secs(1),
        );
        assert!(
            r.is_err(),
            "node-2 has no local echo endpoint, yet its eTP=Local NodePort answered: {r:?}"
        );
    }
    // healthCheckNodePort: 200 with one local endpoint on node-1, 503 with none on node-2
    // (what an external load balancer uses to send eTP=Local traffic only to node-1).
    let health = |node: Ipv4Addr| -> Result<(u16, Value), String> {
        let mut c = Command::new("curl");
        c.args(["-s", "-S", "--max-time", "2", "-w", "\n%{http_code}"])
            .arg(format!("http://{node}:{hc_port}/healthz"));
        let out =
            t.c.run_in(&t.c.external_netns(), &mut c)
                .map_err(|e| format!("{e:#}"))?;
        let text = curl_body(out)?;
        let (body, code) = text.rsplit_once('\n').ok_or("no status code")?;
        let code: u16 = code
            .trim()
            .parse()
            .map_err(|_| format!("status {code:?}"))?;
        Ok((
            code,
            serde_json::from_str(body).map_err(|e| format!("{e}: {body:?}"))?,
        ))
    };
    let (code, body) = t.eventually(
        "node-1's healthCheckNodePort",
        Duration::from_secs(20),
        || health(n1),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["localEndpoints"], 1, "{body}");
    assert_eq!(body["service"]["name"], "echo-local", "{body}");
    let (code, body) = t.eventually(
        "node-2's healthCheckNodePort",
        Duration::from_secs(20),
        || health(n2),
    );
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["localEndpoints"], 0, "{body}");

    // Session affinity ClientIP: from outside through a NodePort, and from a node through
    // the ClusterIP (socket LB), 30 requests reach one backend; without affinity all three
    // answer (30 requests miss one of 3 with p ≈ 2e-5; polled, as endpoints are programmed
    // asynchronously on every node).
    let aff = svc("sticky-affinity");
    let (aff_np, aff_ip) = (
        port(&aff),
        aff["spec"]["clusterIP"].as_str().unwrap().to_owned(),
    );
    let plain = svc("sticky-plain");
    let (plain_np, plain_ip) = (
        port(&plain),
        plain["spec"]["clusterIP"].as_str().unwrap().to_owned(),
    );
    let outside = |np: u16| -> Result<Vec<String>, String> {
        (0..30)
            .map(|_| answerer(&t.get_outside(ext, &format!("http://{n1}:{np}/"), timeout)?))
            .collect()
    };
    let spread = |what: &str, f: &dyn Fn() -> Result<Vec<String>, String>| {
        t.eventually(what, Duration::from_secs(20), || {
            let seen: BTreeSet<String> = f()?.into_iter().collect();
            (seen == sticky_names)
                .then_some(())
                .ok_or(format!("answered by {seen:?}, replicas {sticky_names:?}"))
        })
    };
    spread("sticky-plain's NodePort to spread", &|| outside(plain_np));
    spread("sticky-plain's ClusterIP from node-2 to spread", &|| {
        t.answerers_on_node(1, 30, &format!("http://{plain_ip}/"))
    });
    for (what, answers) in [
        ("NodePort from outside", outside(aff_np)),
        (
            "ClusterIP from node-2",
            t.answerers_on_node(1, 30, &format!("http://{aff_ip}/")),
        ),
    ] {
        let answers = answers.unwrap_or_else(|e| panic!("sticky-affinity {what}: {e}"));
        let seen: BTreeSet<&String> = answers.iter().collect();
        assert_eq!(
            seen.len(),
            1,
            "sticky-affinity {what}: 30 requests from one client reached {seen:?}"
        );
        assert!(sticky_names.contains(answers[0].as_str()));
    }

    // A failing liveness probe: after /fail, /healthz answers 500, two failures (1 s apart)
    // kill the container, the runtime starts it again in the same pod (a fresh process
    // whose /healthz passes), and the pod is Ready again.
    let live = t.wait_ready("live", 1, Duration::from_secs(60)).remove(0);
    let node = node_index(&live.node);
    let out =
        t.c.run_on_node(
            node,
            Command::new("curl")
                .args(["-s", "-S", "--max-time", "3"])
                .arg(format!("http://{}:8080/fail", live.ip)),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "GET /fail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed_at = Instant::now();
    let status = t.eventually(
        "the live pod restarted by its liveness probe and Ready again",
        Duration::from_secs(45),
        || {
            let p = t.json(&["get", "pod", &live.name])?;
            let cs = &p["status"]["containerStatuses"][0];
            if cs["restartCount"].as_i64() >= Some(1) && cs["ready"] == true && is_ready(&p) {
                Ok(p)
            } else {
                Err(format!("{cs}"))
            }
        },
    );
    eprintln!(
        "liveness: restarted and Ready {:.1?} after /fail",
        failed_at.elapsed()
    );
    assert_eq!(status["metadata"]["uid"], live.uid.as_str(), "the same pod");
    let cs = &status["status"]["containerStatuses"][0];
    assert!(
        cs["lastState"]["terminated"].is_object(),
        "the killed instance is in lastState: {cs}"
    );
    // Healthy again: the new instance is not failing (no further restart for 3 s, i.e.
    // three probe periods beyond the threshold).
    let restarts = cs["restartCount"].as_i64().unwrap();
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        let p = t.json(&["get", "pod", &live.name]).unwrap();
        assert_eq!(
            p["status"]["containerStatuses"][0]["restartCount"].as_i64(),
            Some(restarts),
            "the restarted container keeps passing its liveness probe"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("liveness/eTP=Local/affinity test: {:.1?}", began.elapsed());
}

/// One request of a load client: when it started, and whom it reached (or why not).
struct Sample {
    client: Ipv4Addr,
    at: Instant,
    end: Instant,
    result: Result<String, String>,
}

#[test]
fn a_lost_node_fails_only_the_flows_pinned_to_it_until_its_endpoints_go() {
    let began = Instant::now();
    // Node loss noticed within seconds: 1 s Lease renewals, 6 s grace, 15 s eviction (long
    // enough to see the pods Ready=False before they are evicted, on a busy machine too).
    let mut t = T::start(
        "rb",
        3,
        &[
            "--node-monitor-grace-period",
            "6s",
            "--pod-eviction-timeout",
            "15s",
        ],
    );
    t.apply(
        &[
            deployment("svc", 6, "", ""),
            service(
                "svc",
                "svc",
                "  type: NodePort\n  sessionAffinity: ClientIP\n",
            ),
        ]
        .join("---\n"),
    );
    let pods = t.eventually(
        "6 Ready svc pods, some on node-3",
        Duration::from_secs(90),
        || {
            let pods = t.wait_ready("svc", 6, Duration::from_secs(90));
            if pods.iter().any(|p| p.node == "node-3") && pods.iter().any(|p| p.node != "node-3") {
                Ok(pods)
            } else {
                Err("no replica on node-3".to_string())
            }
        },
    );
    let node_of: BTreeMap<String, String> = pods
        .iter()
        .map(|p| (p.name.clone(), p.node.clone()))
        .collect();
    let np = t.json(&["get", "svc", "svc"]).unwrap()["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .unwrap();
    let url = format!("http://{}:{np}/", t.c.nodes()[0].ip);
    let timeout = Duration::from_secs(1);

    // Clients: extra addresses of the external client, each pinned by affinity to one
    // backend. Probe until at least 3 are pinned to node-3's backends and 3 elsewhere.
    let ext = t.c.external_netns();
    t.eventually("svc's NodePort answering", Duration::from_secs(20), || {
        t.get_outside(skiff_cluster::EXTERNAL_IP, &url, timeout)
    });
    let mut pinned: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for last in 201..=250u8 {
        let client = Ipv4Addr::new(172, 31, 0, last);
        sys::ip_in(
            &ext,
            &["addr", "add", &format!("{client}/24"), "dev", "eth0"],
        )
        .unwrap();
        let body = t.eventually("a client's first answer", Duration::from_secs(10), || {
            t.get_outside(client, &url, timeout)
        });
        pinned.insert(client, answerer(&body).unwrap());
        let on3 = pinned.values().filter(|p| node_of[*p] == "node-3").count();
        if on3 >= 3 && pinned.len() - on3 >= 3 {
            break;
        }
    }
    let to_dead: BTreeSet<Ipv4Addr> = pinned
        .iter()
        .filter(|(_, p)| node_of[*p] == "node-3")
        .map(|(c, _)| *c)
        .collect();
    assert!(
        to_dead.len() >= 3 && pinned.len() - to_dead.len() >= 3,
        "50 clients did not give 3 pinned to node-3 and 3 elsewhere: {pinned:?}"
    );
    eprintln!("clients: {pinned:?}");

    let stop = AtomicBool::new(false);
    let samples = Mutex::new(Vec::<Sample>::new());
    let mut marks: Vec<(&str, Instant)> = Vec::new();
    std::thread::scope(|s| {
        for &client in pinned.keys() {
            let (ext, url, stop, samples) = (&ext, &url, &stop, &samples);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let at = Instant::now();
                    let result = get_from(ext, client, url, timeout).and_then(|b| answerer(&b));
                    let end = Instant::now();
                    samples.lock().unwrap().push(Sample {
                        client,
                        at,
                        end,
                        result,
                    });
                    // Paced: 8+ clients spawning curl back to back would starve the agents
                    // of a 2-core machine.
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        // A failed wait stops the clients first, or the scope would never end.
        let go = |t: &T, what: &str, timeout: Duration, f: &dyn Fn() -> Result<(), String>| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                t.eventually(what, timeout, f)
            }));
            if let Err(e) = r {
                stop.store(true, Ordering::SeqCst);
                std::panic::resume_unwind(e);
            }
        };
        // Load before the loss: everything answers, each client by its own backend.
        go(&t, "2 s of load", Duration::from_secs(30), &|| {
            let n = samples.lock().unwrap().len();
            (n >= pinned.len() * 5)
                .then_some(())
                .ok_or(format!("{n} samples"))
        });
        // From the first kill on (the pods die before the link goes down, so flows to them
        // may already be reset during the call).
        let killed = Instant::now();
        if let Err(e) = t.c.kill_node(2) {
            stop.store(true, Ordering::SeqCst);
            panic!("taking node-3 away: {e:#}");
        }
        marks.push(("node-3 killed", killed));
        go(&t, "node-3 Ready=Unknown", Duration::from_secs(40), &|| {
            let n = t.json(&["get", "node", "node-3"])?;
            let unknown = n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "Unknown");
            unknown.then_some(()).ok_or("still Ready".into())
        });
        marks.push(("node-3 Unknown", Instant::now()));
        // MarkPodsNotReady: the dead node's pods go Ready=False while they still exist
        // (before the eviction), which takes their endpoints out of the slices.
        go(
            &t,
            "node-3's pods Ready=False before their eviction",
            Duration::from_secs(15),
            &|| {
                let on3: Vec<Value> = t
                    .pods("svc")?
                    .into_iter()
                    .filter(|p| p["spec"]["nodeName"] == "node-3")
                    .collect();
                let undeleted = on3
                    .iter()
                    .all(|p| p["metadata"]["deletionTimestamp"].is_null());
                if !undeleted {
                    return Err("FATAL: evicted before being marked not ready".into());
                }
                let ready: Vec<&str> = on3
                    .iter()
                    .filter(|p| is_ready(p))
                    .filter_map(|p| p["metadata"]["name"].as_str())
                    .collect();
                (!on3.is_empty() && ready.is_empty())
                    .then_some(())
                    .ok_or(format!("still Ready: {ready:?}"))
            },
        );
        marks.push(("node-3's pods Ready=False", Instant::now()));
        go(
            &t,
            "the EndpointSlice without ready endpoints on node-3",
            Duration::from_secs(10),
            &|| {
                let slices = t.json(&[
                    "get",
                    "endpointslices",
                    "-l",
                    "kubernetes.io/service-name=svc",
                ])?;
                let ready_on3 = slices["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                    .filter(|e| e["nodeName"] == "node-3" && e["conditions"]["ready"] == true)
                    .count();
                (ready_on3 == 0)
                    .then_some(())
                    .ok_or(format!("{ready_on3} ready"))
            },
        );
        marks.push(("slices without node-3", Instant::now()));
        go(
            &t,
            "node-3 tainted unreachable (NoExecute)",
            Duration::from_secs(10),
            &|| {
                let n = t.json(&["get", "node", "node-3"])?;
                n["spec"]["taints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| {
                        x["key"] == "node.kubernetes.io/unreachable" && x["effect"] == "NoExecute"
                    })
                    .then_some(())
                    .ok_or(format!("taints {}", n["spec"]["taints"]))
            },
        );
        marks.push(("unreachable taint", Instant::now()));
        go(
            &t,
            "6 Ready svc pods on node-1 and node-2",
            Duration::from_secs(60),
            &|| {
                let all = t.pods("svc")?;
                let live: Vec<Pod> = all
                    .iter()
                    .filter_map(ready_pod)
                    .filter(|p| p.node != "node-3")
                    .collect();
                let on3 = all
                    .iter()
                    .filter(|p| p["spec"]["nodeName"] == "node-3")
                    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                    .count();
                (live.len() == 6 && on3 == 0).then_some(()).ok_or(format!(
                    "{} Ready elsewhere, {on3} undeleted on node-3",
                    live.len()
                ))
            },
        );
        marks.push(("recreated elsewhere", Instant::now()));
        // A last stretch of load on the healed Deployment.
        let n0 = samples.lock().unwrap().len();
        go(&t, "2 s more load", Duration::from_secs(30), &|| {
            let n = samples.lock().unwrap().len();
            (n >= n0 + pinned.len() * 5)
                .then_some(())
                .ok_or(format!("{n} samples"))
        });
        stop.store(true, Ordering::SeqCst);
    });
    let killed = marks[0].1;
    let withdrawn = marks
        .iter()
        .find(|m| m.0 == "slices without node-3")
        .unwrap()
        .1;
    for (what, at) in &marks {
        eprintln!(
            "node loss: {what} at +{:.1?}",
            at.saturating_duration_since(killed)
        );
    }
    let samples = samples.into_inner().unwrap();
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.result.is_err()).collect();
    eprintln!(
        "node loss: {} requests, {} failed",
        samples.len(),
        failed.len()
    );
    // Nothing failed before the loss, and no client pinned to a live backend ever failed
    // or moved (affinity held throughout).
    for s in &samples {
        match &s.result {
            Err(e) => {
                assert!(
                    to_dead.contains(&s.client),
                    "{} (pinned to {} on a live node) failed at +{:.1?}: {e}",
                    s.client,
                    pinned[&s.client],
                    s.at.saturating_duration_since(killed)
                );
                // In flight when the node went (started up to a timeout before) is fine;
                // failing before the loss is not.
                assert!(
                    s.end >= killed,
                    "{} failed before the node was taken away: {e}",
                    s.client
                );
            }
            Ok(who) if !to_dead.contains(&s.client) => assert_eq!(
                who, &pinned[&s.client],
                "{} left its backend (affinity)",
                s.client
            ),
            Ok(_) => {}
        }
    }
    // The dead node's flows did fail (the test saw the loss), and stopped failing once its
    // endpoints were withdrawn: every request started 1 s (one connect timeout, plus the
    // agents' programming) after the slices changed was answered, by a live backend.
    assert!(
        !failed.is_empty(),
        "no request to node-3's backends failed: was node-3 really taken away?"
    );
    let settled = withdrawn + Duration::from_secs(1);
    for s in samples.iter().filter(|s| s.at >= settled) {
        match &s.result {
            Ok(who) => assert_ne!(
                node_of.get(who).map(String::as_str),
                Some("node-3"),
                "{} answered by dead node-3's {who}",
                s.client
            ),
            Err(e) => panic!(
                "{} failed at +{:.1?}, after node-3's endpoints were withdrawn (+{:.1?}): {e}",
                s.client,
                s.at.saturating_duration_since(killed),
                withdrawn.saturating_duration_since(killed)
            ),
        }
    }
    let last_failure = failed.iter().map(|s| s.at).max().unwrap();
    eprintln!(
        "node loss: last failed request started at +{:.1?}",
        last_failure.saturating_duration_since(killed)
    );
    eprintln!("node loss test: {:.1?}", began.elapsed());
}
