//! 50 plugin processes allocating at once must get 50 distinct addresses: the `lock` file's
//! flock serializes them the way host-local's allocators are serialized. Needs root.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

const N: usize = 50;

#[test]
fn fifty_concurrent_adds_then_dels() {
    if !privileged("fifty_concurrent_adds_then_dels") {
        return;
    }
    let host = NetNs::new("h");
    let data = TempDir::new("many");
    let conf = conf("1.1.0", "many", "skb50", "10.250.50.0/24", &data);
    let conts: Vec<NetNs> = (0..N).map(|i| NetNs::new(&format!("c{i}"))).collect();
    let ids: Vec<String> = (0..N).map(|i| format!("ctr{i}")).collect();

    let spawn_all = |cmd: &str| {
        // Start every process before waiting on any, so they really race for the lock.
        let children: Vec<_> = conts
            .iter()
            .zip(&ids)
            .map(|(c, id)| {
                let call = Call::new(BIN, &host, cmd).attach(id, c, "eth0");
                let mut child = call.command().spawn().expect("spawning skiff-cni");
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(conf.to_string().as_bytes())
                    .unwrap();
                child
            })
            .collect();
        children.into_iter().map(wait_reply).collect::<Vec<_>>()
    };

    let replies = spawn_all("ADD");
    let mut ips = BTreeSet::new();
    for (i, r) in replies.iter().enumerate() {
        let v: Value = r.expect_ok(&format!("ADD {i}"));
        ips.insert(v["ips"][0]["address"].as_str().unwrap().to_string());
    }
    assert_eq!(ips.len(), N, "duplicate addresses handed out: {ips:?}");
    assert_eq!(data.ip_files("many").len(), N);
    assert_eq!(host.veths().len(), N);
    for (c, id) in conts.iter().zip(&ids) {
        let addr = &c.addrs("eth0")[0];
        assert!(ips.contains(addr), "{id} has {addr}, not in any result");
        let file = data
            .path()
            .join("many")
            .join(addr.split('/').next().unwrap());
        assert_eq!(
            std::fs::read_to_string(file).unwrap(),
            format!("{id}\r\neth0")
        );
    }

    for (i, r) in spawn_all("DEL").iter().enumerate() {
        r.expect_ok(&format!("DEL {i}"));
    }
    assert!(data.ip_files("many").is_empty(), "{:?}", data.files("many"));
    assert!(host.veths().is_empty(), "{:?}", host.veths());
    for c in &conts {
        assert!(c.link("eth0").is_none());
    }
}
