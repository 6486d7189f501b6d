//! skiff-cni run as a runtime runs it: the binary, in a "host" namespace made by the test,
//! attaching container namespaces made by the test. Needs root.

mod common;

use common::*;
use serde_json::{json, Value};

fn with_prev(mut conf: Value, prev: &Value) -> Value {
    conf["prevResult"] = prev.clone();
    conf
}

#[test]
fn add_check_del_lifecycle_1_1_0() {
    if !privileged("add_check_del_lifecycle_1_1_0") {
        return;
    }
    let host = NetNs::new("h");
    let c = NetNs::new("c");
    let data = TempDir::new("life");
    let conf = conf("1.1.0", "life", "skb1", "10.250.1.0/24", &data);

    let add = Call::new(BIN, &host, "ADD").attach("ctr1", &c, "eth0");
    let res = add.run(&conf).expect_ok("ADD");

    // The result, per SPEC.md "Success" for 1.1.0.
    assert_eq!(res["cniVersion"], "1.1.0");
    let ifs = res["interfaces"].as_array().unwrap();
    assert_eq!(
        ifs.len(),
        3,
        "bridge, host veth, container interface: {res}"
    );
    assert_eq!(ifs[0]["name"], "skb1");
    assert!(ifs[0].get("sandbox").is_none());
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(ifs[2]["sandbox"], json!(c.path()));
    assert_eq!(ifs[2]["mtu"], 1400);
    assert_eq!(
        res["ips"],
        json!([{"address": "10.250.1.2/24", "gateway": "10.250.1.1", "interface": 2}])
    );
    assert_eq!(
        res["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.250.1.1"}])
    );
    assert_eq!(res["dns"], json!({}));

    // What the kernel has, container side.
    let eth0 = c.link("eth0").expect("eth0 in the container");
    assert_eq!(eth0["mtu"], 1400);
    assert_eq!(eth0["address"], ifs[2]["mac"]);
    assert!(eth0["flags"].as_array().unwrap().contains(&json!("UP")));
    assert_eq!(c.addrs("eth0"), ["10.250.1.2/24"]);
    assert_eq!(
        c.routes(),
        [
            "10.250.1.0/24 via - scope link",
            "default via 10.250.1.1 scope global"
        ]
    );
    let lo = c.link("lo").unwrap();
    assert!(lo["flags"].as_array().unwrap().contains(&json!("UP")));

    // Host side: bridge with the gateway, veth on it with hairpin on.
    let veth = ifs[1]["name"].as_str().unwrap();
    assert_eq!(host.veths(), [veth]);
    assert_eq!(host.link(veth).unwrap()["master"], "skb1");
    assert_eq!(host.link(veth).unwrap()["mtu"], 1400);
    assert_eq!(host.addrs("skb1"), ["10.250.1.1/24"]);
    assert_eq!(
        host.cat(&format!("/sys/class/net/{veth}/brport/hairpin_mode")),
        "1"
    );
    assert_eq!(host.cat("/proc/sys/net/ipv4/ip_forward"), "1");

    // IPAM files in host-local's layout.
    assert_eq!(
        data.files("life"),
        ["10.250.1.2", "last_reserved_ip.0", "lock"]
    );
    assert_eq!(
        std::fs::read_to_string(data.path().join("life/10.250.1.2")).unwrap(),
        "ctr1\r\neth0"
    );

    Call::new(BIN, &host, "CHECK")
        .attach("ctr1", &c, "eth0")
        .run(&with_prev(conf.clone(), &res))
        .expect_ok("CHECK");

    let del = Call::new(BIN, &host, "DEL").attach("ctr1", &c, "eth0");
    del.run(&with_prev(conf.clone(), &res)).expect_ok("DEL");
    assert!(
        host.veths().is_empty(),
        "host veth left: {:?}",
        host.veths()
    );
    assert!(c.link("eth0").is_none());
    assert!(data.ip_files("life").is_empty());
    assert!(
        host.link("skb1").is_some(),
        "DEL keeps the bridge, like bridge"
    );
    // DEL is idempotent, with or without prevResult.
    del.run(&conf).expect_ok("second DEL");
    del.run(&with_prev(conf.clone(), &res))
        .expect_ok("third DEL");

    // DEL succeeds when the namespace is already gone, and when CNI_NETNS is not set.
    let gone = NetNs::new("gone");
    Call::new(BIN, &host, "ADD")
        .attach("ctr2", &gone, "eth0")
        .run(&conf)
        .expect_ok("ADD ctr2");
    let gone_path = gone.path();
    drop(gone);
    let mut del2 = Call::new(BIN, &host, "DEL");
    del2.container_id = Some("ctr2");
    del2.ifname = Some("eth0");
    del2.netns = Some(gone_path);
    del2.run(&conf).expect_ok("DEL with the netns gone");
    del2.netns = None;
    del2.run(&conf).expect_ok("DEL without CNI_NETNS");
    assert!(data.ip_files("life").is_empty());
    assert!(host.veths().is_empty());

    // DEL deletes only its own port: a link that merely has the derived name (a hash
    // collision, or someone else's) stays.
    let squatter = skiff_cni::host_veth_name("life", "ctr3", "eth0");
    host.ip(&[
        "link", "add", &squatter, "type", "veth", "peer", "name", "sq-peer",
    ]);
    let mut del3 = Call::new(BIN, &host, "DEL");
    del3.container_id = Some("ctr3");
    del3.ifname = Some("eth0");
    del3.run(&conf)
        .expect_ok("DEL of an attachment that never was");
    assert!(host.link(&squatter).is_some(), "DEL removed a foreign link");
}

#[test]
fn result_versions_and_negotiation() {
    if !privileged("result_versions_and_negotiation") {
        return;
    }
    let host = NetNs::new("h");
    let c = NetNs::new("c");
    let data = TempDir::new("vers");

    let old = conf("0.4.0", "vers", "skb2", "10.250.2.0/24", &data);
    let res = Call::new(BIN, &host, "ADD")
        .attach("ctr1", &c, "eth0")
        .run(&old)
        .expect_ok("ADD 0.4.0");
    assert_eq!(res["cniVersion"], "0.4.0");
    assert_eq!(
        res["ips"],
        json!([{"version": "4", "address": "10.250.2.2/24", "gateway": "10.250.2.1", "interface": 2}])
    );
    assert!(
        res["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i.get("mtu").is_none()),
        "0.4.0 interfaces have no mtu: {res}"
    );
    Call::new(BIN, &host, "DEL")
        .attach("ctr1", &c, "eth0")
        .run(&old)
        .expect_ok("DEL 0.4.0");

    let mut multi = conf("1.1.0", "vers", "skb2", "10.250.2.0/24", &data);
    multi["cniVersions"] = json!(["0.4.0", "1.0.0", "2.0.0"]);
    let res = Call::new(BIN, &host, "ADD")
        .attach("ctr2", &c, "eth0")
        .run(&multi)
        .expect_ok("ADD with cniVersions");
    assert_eq!(res["cniVersion"], "1.0.0", "highest shared version");
    assert!(res["ips"][0].get("version").is_none());
    Call::new(BIN, &host, "DEL")
        .attach("ctr2", &c, "eth0")
        .run(&multi)
        .expect_ok("DEL");

    let v = Call::new(BIN, &host, "VERSION")
        .run(&json!({"cniVersion": "1.1.0"}))
        .expect_ok("VERSION");
    assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
}

#[test]
fn check_detects_drift() {
    if !privileged("check_detects_drift") {
        return;
    }
    let host = NetNs::new("h");
    let c = NetNs::new("c");
    let data = TempDir::new("chk");
    let conf = conf("1.1.0", "chk", "skb3", "10.250.3.0/24", &data);
    let res = Call::new(BIN, &host, "ADD")
        .attach("ctr1", &c, "eth0")
        .run(&conf)
        .expect_ok("ADD");
    let check = Call::new(BIN, &host, "CHECK").attach("ctr1", &c, "eth0");
    check.run(&with_prev(conf.clone(), &res)).expect_ok("CHECK");
    check.run(&conf).expect_err(7, "CHECK without prevResult");

    c.ip(&["route", "del", "default"]);
    check
        .run(&with_prev(conf.clone(), &res))
        .expect_err(101, "CHECK with the default route gone");
    c.ip(&["addr", "del", "10.250.3.2/24", "dev", "eth0"]);
    check
        .run(&with_prev(conf.clone(), &res))
        .expect_err(101, "CHECK with the address gone");
}

#[test]
fn gc_removes_attachments_not_listed() {
    if !privileged("gc_removes_attachments_not_listed") {
        return;
    }
    let host = NetNs::new("h");
    let (c1, c2) = (NetNs::new("c1"), NetNs::new("c2"));
    let data = TempDir::new("gc");
    let mut conf = conf("1.1.0", "gc", "skb4", "10.250.4.0/24", &data);
    let r1 = Call::new(BIN, &host, "ADD")
        .attach("keep", &c1, "eth0")
        .run(&conf)
        .expect_ok("ADD keep");
    Call::new(BIN, &host, "ADD")
        .attach("stale", &c2, "eth0")
        .run(&conf)
        .expect_ok("ADD stale");
    assert_eq!(host.veths().len(), 2);
    assert_eq!(data.ip_files("gc"), ["10.250.4.2", "10.250.4.3"]);

    Call::new(BIN, &host, "GC")
        .run(&conf)
        .expect_err(7, "GC without valid-attachments");
    assert_eq!(host.veths().len(), 2, "a refused GC removes nothing");
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    Call::new(BIN, &host, "GC").run(&conf).expect_ok("GC");
    assert_eq!(
        host.veths(),
        [r1["interfaces"][1]["name"].as_str().unwrap()]
    );
    assert_eq!(data.ip_files("gc"), ["10.250.4.2"]);
    assert!(
        c2.link("eth0").is_none(),
        "the stale pair went with its host end"
    );
    Call::new(BIN, &host, "CHECK")
        .attach("keep", &c1, "eth0")
        .run(&with_prev(conf.clone(), &r1))
        .expect_ok("CHECK of the kept attachment");
}

#[test]
fn status_reports_readiness() {
    if !privileged("status_reports_readiness") {
        return;
    }
    let host = NetNs::new("h");
    let c = NetNs::new("c");
    let data = TempDir::new("st");
    // A /30 has exactly one address to hand out: .1 is the gateway, .2 the pod.
    let conf = conf("1.1.0", "st", "skb5", "10.250.5.0/30", &data);
    let status = Call::new(BIN, &host, "STATUS");
    status.run(&conf).expect_ok("STATUS with a range");

    let mut unconfigured = conf.clone();
    unconfigured["ipam"]["ranges"] = json!([]);
    status
        .run(&unconfigured)
        .expect_err(50, "STATUS before the pod CIDR is configured");

    Call::new(BIN, &host, "ADD")
        .attach("ctr1", &c, "eth0")
        .run(&conf)
        .expect_ok("ADD");
    status
        .run(&conf)
        .expect_err(50, "STATUS with the range full");
}

/// Every bad input gives the spec's error object with the right code, a non-zero exit,
/// and leaves no veth and no reservation behind.
#[test]
fn errors_have_codes_and_leak_nothing() {
    if !privileged("errors_have_codes_and_leak_nothing") {
        return;
    }
    let host = NetNs::new("h");
    let c = NetNs::new("c");
    let data = TempDir::new("err");
    let good = conf("1.1.0", "err", "skb6", "10.250.6.0/30", &data);
    let not_ns = data.path().join("not-a-netns");
    std::fs::write(&not_ns, "").unwrap();

    let no_leak = |what: &str, veths: usize, ips: usize| {
        assert_eq!(
            host.veths().len(),
            veths,
            "{what}: veths {:?}",
            host.veths()
        );
        assert_eq!(
            data.ip_files("err").len(),
            ips,
            "{what}: {:?}",
            data.ip_files("err")
        );
        let cont: Vec<_> = c
            .links()
            .into_iter()
            .filter(|l| l["ifname"] != "lo")
            .collect();
        assert!(cont.len() == veths, "{what}: container interfaces {cont:?}");
    };
    let add = || Call::new(BIN, &host, "ADD").attach("ctr1", &c, "eth0");

    add()
        .run_raw("{\"cniVersion\": ")
        .expect_err(6, "malformed JSON");
    no_leak("malformed JSON", 0, 0);
    add()
        .run_raw("[1,2]")
        .expect_err(6, "JSON that is not an object");

    let mut no_cmd = add();
    no_cmd.command = "";
    no_cmd.run(&good).expect_err(4, "empty CNI_COMMAND");
    let mut bad_cmd = add();
    bad_cmd.command = "FROB";
    bad_cmd.run(&good).expect_err(4, "unknown CNI_COMMAND");

    for bad in ["-ctr", "ctr/1", "ctr 1"] {
        let mut call = add();
        call.container_id = Some(bad);
        call.run(&good)
            .expect_err(4, &format!("CNI_CONTAINERID {bad:?}"));
    }
    let mut call = add();
    call.container_id = None;
    call.run(&good).expect_err(4, "missing CNI_CONTAINERID");
    let mut call = add();
    call.ifname = None;
    call.run(&good).expect_err(4, "missing CNI_IFNAME");
    let mut call = add();
    call.ifname = Some("much-too-long-name0");
    call.run(&good).expect_err(4, "CNI_IFNAME over 15 bytes");
    let mut call = add();
    call.netns = None;
    call.run(&good).expect_err(4, "missing CNI_NETNS");
    let mut call = add();
    call.netns = Some("/run/netns/skt-no-such-namespace".into());
    call.run(&good)
        .expect_err(3, "CNI_NETNS that does not exist");
    let mut call = add();
    call.netns = Some(not_ns.to_str().unwrap().into());
    call.run(&good)
        .expect_err(4, "CNI_NETNS that is not a namespace");
    no_leak("bad environment", 0, 0);

    let mut v = good.clone();
    v["cniVersion"] = json!("0.3.1");
    let e = add().run(&v).expect_err(1, "unsupported cniVersion");
    assert!(e["details"].as_str().unwrap().contains("1.1.0"), "{e}");
    let mut v = good.clone();
    v.as_object_mut().unwrap().remove("name");
    add().run(&v).expect_err(7, "missing name");
    let mut v = good.clone();
    v["ipam"]["ranges"] = json!([[{"subnet": "10.250.6.0/33"}]]);
    add().run(&v).expect_err(7, "bad subnet");
    let mut v = good.clone();
    v["ipam"]["type"] = json!("dhcp");
    add().run(&v).expect_err(7, "foreign ipam type");
    let mut v = good.clone();
    v["ipMasq"] = json!(true);
    add().run(&v).expect_err(2, "ipMasq is not implemented");
    no_leak("bad config", 0, 0);

    // The /30 holds one pod: a second one finds the range exhausted (try again later).
    add().run(&good).expect_ok("first ADD");
    no_leak("first ADD", 1, 1);
    let c2 = NetNs::new("c2");
    Call::new(BIN, &host, "ADD")
        .attach("ctr2", &c2, "eth0")
        .run(&good)
        .expect_err(11, "exhausted range");
    assert!(c2.link("eth0").is_none());
    no_leak("exhausted range", 1, 1);

    // ADD twice without DEL: refused, and the first attachment is intact.
    add()
        .run(&good)
        .expect_err(100, "second ADD for the same attachment");
    no_leak("duplicate ADD", 1, 1);

    // A failure after the address was reserved (the bridge name is taken by a non-bridge)
    // must roll back the reservation.
    Call::new(BIN, &host, "DEL")
        .attach("ctr1", &c, "eth0")
        .run(&good)
        .expect_ok("DEL");
    // (A veth, since this kernel may lack the dummy driver; removed again below.)
    host.ip(&[
        "link", "add", "skb6x", "type", "veth", "peer", "name", "skb6y",
    ]);
    let mut v = good.clone();
    v["bridge"] = json!("skb6x");
    add().run(&v).expect_err(7, "bridge name taken by a veth");
    host.ip(&["link", "del", "skb6x"]);
    no_leak("bridge taken", 0, 0);
    // A failure after the veth exists and the address is reserved: a route whose gateway
    // is unreachable from the pod. Both must be rolled back.
    let mut v = good.clone();
    v["ipam"]["routes"] = json!([{"dst": "198.18.50.0/24", "gw": "198.18.99.1"}]);
    add().run(&v).expect_err(102, "unreachable route gateway");
    no_leak("route failure", 0, 0);
    // CNI_IFNAME taken in the container: refused before anything is created.
    c.ip(&[
        "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p",
    ]);
    let mut call = add();
    call.ifname = Some("eth9");
    call.run(&good)
        .expect_err(100, "CNI_IFNAME already exists in the container");
    c.ip(&["link", "del", "eth9"]);
    no_leak("ifname taken", 0, 0);
}

/// A conflist chain the way libcni runs it: each plugin gets its own config plus `name`,
/// `cniVersion` and the previous plugin's result as `prevResult`; DEL runs in reverse.
#[test]
fn chains_before_reference_tuning_and_bandwidth() {
    if !privileged("chains_before_reference_tuning_and_bandwidth") {
        return;
    }
    let Some(refdir) = reference_plugins("chains_before_reference_tuning_and_bandwidth") else {
        return;
    };
    let host = NetNs::new("h");
    let c = NetNs::new("c");
    let data = TempDir::new("chain");
    let mut first = conf("1.0.0", "chain", "skb7", "10.250.7.0/24", &data);
    first.as_object_mut().unwrap().remove("cniVersion");
    first.as_object_mut().unwrap().remove("name");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "chain",
        "plugins": [
            first,
            {"type": "tuning", "mtu": 1300, "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"}},
            {"type": "bandwidth", "ingressRate": 8_000_000, "ingressBurst": 80_000,
             "egressRate": 8_000_000, "egressBurst": 80_000},
        ],
    });
    let plugin_path = |ty: &str| {
        if ty == "skiff-cni" {
            BIN.to_string()
        } else {
            refdir.join(ty).to_str().unwrap().to_string()
        }
    };
    let invoke = |cmd: &str, plugin: &Value, prev: Option<&Value>| {
        let mut cfg = plugin.clone();
        cfg["name"] = conflist["name"].clone();
        cfg["cniVersion"] = conflist["cniVersion"].clone();
        if let Some(p) = prev {
            cfg["prevResult"] = p.clone();
        }
        let path = plugin_path(plugin["type"].as_str().unwrap());
        Call::new(&path, &host, cmd)
            .attach("ctr1", &c, "eth0")
            .run(&cfg)
    };
    let plugins = conflist["plugins"].as_array().unwrap();
    let mut prev: Option<Value> = None;
    for p in plugins {
        let r = invoke("ADD", p, prev.as_ref()).expect_ok(&format!("ADD {}", p["type"]));
        prev = Some(r);
    }
    let fin = prev.unwrap();
    // skiff-cni's attachment survives the chain in the final result.
    assert_eq!(fin["ips"][0]["address"], "10.250.7.2/24");
    assert_eq!(fin["interfaces"][2]["name"], "eth0");
    assert_eq!(
        c.link("eth0").unwrap()["mtu"],
        1300,
        "tuning applied its mtu"
    );
    assert_eq!(c.cat("/proc/sys/net/ipv4/conf/eth0/accept_local"), "1");
    let veth = fin["interfaces"][1]["name"].as_str().unwrap();
    let qdisc = run_ok(
        "ip",
        &[
            "netns", "exec", &host.name, "tc", "qdisc", "show", "dev", veth,
        ],
    );
    assert!(
        qdisc.contains("tbf"),
        "bandwidth shaped the host veth: {qdisc}"
    );

    for p in plugins {
        invoke("CHECK", p, Some(&fin)).expect_ok(&format!("CHECK {}", p["type"]));
    }
    for p in plugins.iter().rev() {
        invoke("DEL", p, Some(&fin)).expect_ok(&format!("DEL {}", p["type"]));
    }
    assert!(host.veths().is_empty());
    assert!(data.ip_files("chain").is_empty());
}

/// skiff-cni as the second plugin: it passes the earlier result through and appends its
/// own, with interface indices shifted.
#[test]
fn merges_prev_result() {
    if !privileged("merges_prev_result") {
        return;
    }
    let host = NetNs::new("h");
    let c = NetNs::new("c");
    let data = TempDir::new("merge");
    let mut conf = conf("1.0.0", "merge", "skb8", "10.250.8.0/24", &data);
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "other0", "sandbox": c.path()}],
        "ips": [{"address": "198.18.0.5/24", "interface": 0}],
        "routes": [{"dst": "198.18.1.0/24"}],
        "dns": {"nameservers": ["198.18.0.53"]},
    });
    conf["prevResult"] = prev;
    let res = Call::new(BIN, &host, "ADD")
        .attach("ctr1", &c, "eth1")
        .run(&conf)
        .expect_ok("ADD with prevResult");
    assert_eq!(res["interfaces"][0]["name"], "other0");
    assert_eq!(res["interfaces"].as_array().unwrap().len(), 4);
    assert_eq!(res["ips"][0]["address"], "198.18.0.5/24");
    assert_eq!(res["ips"][1]["interface"], 3);
    assert_eq!(res["routes"][0]["dst"], "198.18.1.0/24");
    assert_eq!(res["dns"]["nameservers"][0], "198.18.0.53");
    Call::new(BIN, &host, "DEL")
        .attach("ctr1", &c, "eth1")
        .run(&conf)
        .expect_ok("DEL");
}
