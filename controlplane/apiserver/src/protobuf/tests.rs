//! Decoding the bodies kubectl 1.33 sends (captured from a real `kubectl create ...`,
//! under tests/fixtures/protobuf) must give the JSON the same kubectl prints for the same
//! command with `--dry-run=client -o json`, and malformed bodies must fail with a path.

use serde_json::{json, Value};

use super::*;

fn fixture(name: &str) -> (Vec<u8>, Value) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/protobuf");
    let pb = std::fs::read(format!("{dir}/{name}.pb")).expect("read .pb fixture");
    let js = std::fs::read(format!("{dir}/{name}.json")).expect("read .json fixture");
    (
        pb,
        serde_json::from_slice(&js).expect(".json fixture is JSON"),
    )
}

fn assert_matches_kubectl_json(name: &str) {
    let (pb, want) = fixture(name);
    let got = decode(&pb).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        got,
        want,
        "{name}: decoded\n{}\nkubectl's JSON\n{}",
        serde_json::to_string_pretty(&got).unwrap(),
        serde_json::to_string_pretty(&want).unwrap()
    );
}

#[test]
fn create_deployment() {
    assert_matches_kubectl_json("create-deployment");
}

#[test]
fn create_deployment_with_zero_replicas_keeps_the_zero() {
    assert_matches_kubectl_json("create-deployment-zero");
    let (pb, _) = fixture("create-deployment-zero");
    let v = decode(&pb).unwrap();
    assert_eq!(v.pointer("/spec/replicas"), Some(&json!(0)));
    assert_eq!(
        v.pointer("/spec/template/spec/containers/0/ports/0/containerPort"),
        Some(&json!(8080))
    );
}

#[test]
fn create_configmap() {
    assert_matches_kubectl_json("create-configmap");
}

#[test]
fn create_secret_generic_data_is_base64() {
    assert_matches_kubectl_json("create-secret");
}

#[test]
fn create_namespace() {
    assert_matches_kubectl_json("create-namespace");
}

#[test]
fn create_service_clusterip_int_or_string_target_port() {
    assert_matches_kubectl_json("create-service");
}

#[test]
fn create_serviceaccount() {
    assert_matches_kubectl_json("create-serviceaccount");
}

#[test]
fn create_job() {
    assert_matches_kubectl_json("create-job");
}

// ---- hand-built messages for what the captures do not cover -------------------------

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn len_field(tag: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(tag) << 3 | 2, &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

fn int_field(tag: u32, v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(tag) << 3, &mut out);
    varint(v as u64, &mut out);
    out
}

fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let tm = [
        len_field(1, api_version.as_bytes()),
        len_field(2, kind.as_bytes()),
    ]
    .concat();
    [b"k8s\0".to_vec(), len_field(1, &tm), len_field(2, raw)].concat()
}

#[test]
fn times_quantities_pointers_and_inline_structs() {
    // Pod { metadata: {name: "p", creationTimestamp: {seconds: 1700000000}},
    //       spec: {containers: [{name: "c", resources: {limits: {cpu: "500m"}},
    //              livenessProbe: {handler: {tcpSocket: {port: {type: 1, strVal: "http"}}}}}],
    //              terminationGracePeriodSeconds: 0, hostNetwork: false} }
    let meta = [
        len_field(1, b"p"),
        len_field(8, &int_field(1, 1_700_000_000)),
    ]
    .concat();
    let quantity = len_field(1, b"500m");
    let limits = len_field(1, &[len_field(1, b"cpu"), len_field(2, &quantity)].concat());
    let resources = limits;
    let port = [int_field(1, 1), len_field(3, b"http")].concat();
    let tcp = len_field(1, &port);
    let handler = len_field(3, &tcp);
    let probe = len_field(1, &handler);
    let container = [
        len_field(1, b"c"),
        len_field(8, &resources),
        len_field(10, &probe),
    ]
    .concat();
    let spec = [
        len_field(2, &container),
        int_field(4, 0),  // terminationGracePeriodSeconds: *int64, kept
        int_field(11, 0), // hostNetwork: bool, zero dropped
    ]
    .concat();
    let pod = [len_field(1, &meta), len_field(2, &spec)].concat();
    let got = decode(&envelope("v1", "Pod", &pod)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "creationTimestamp": "2023-11-14T22:13:20Z"},
            "spec": {
                "containers": [{
                    "name": "c",
                    "resources": {"limits": {"cpu": "500m"}},
                    "livenessProbe": {"tcpSocket": {"port": "http"}},
                }],
                "terminationGracePeriodSeconds": 0,
            },
        })
    );
}

#[test]
fn lease_micro_time_and_delete_options_in_any_group() {
    let micro = [int_field(1, 1_700_000_000), int_field(2, 123_456_789)].concat();
    let spec = [len_field(1, b"me"), len_field(4, &micro), int_field(2, 0)].concat();
    let lease = [len_field(1, &len_field(1, b"l")), len_field(2, &spec)].concat();
    let got = decode(&envelope("coordination.k8s.io/v1", "Lease", &lease)).unwrap();
    assert_eq!(
        got["spec"],
        json!({"holderIdentity": "me", "renewTime": "2023-11-14T22:13:20.123456Z", "leaseDurationSeconds": 0})
    );
    let opts = [int_field(1, 0), len_field(4, b"Foreground")].concat();
    let got = decode(&envelope("apps/v1", "DeleteOptions", &opts)).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "apps/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "propagationPolicy": "Foreground"})
    );
}

#[test]
fn unknown_kind_is_named() {
    let e = decode(&envelope("networking.k8s.io/v1", "Ingress", &[])).unwrap_err();
    assert_eq!(
        e,
        DecodeError::UnknownKind {
            api_version: "networking.k8s.io/v1".into(),
            kind: "Ingress".into()
        }
    );
    assert!(
        e.to_string()
            .contains("Ingress in version \"networking.k8s.io/v1\""),
        "{e}"
    );
}

#[test]
fn malformed_bodies_say_what_and_where() {
    let e = decode(b"{\"kind\":\"Pod\"}").unwrap_err();
    assert!(
        e.to_string()
            .contains("does not start with the Kubernetes protobuf prefix"),
        "{e}"
    );

    // A ConfigMap whose data map entry claims 100 bytes but has 2.
    let mut entry = len_field(1, b"k");
    entry.extend_from_slice(&[0x12, 100, b'v', b'v']);
    let cm = [len_field(1, &len_field(1, b"cm")), len_field(2, &entry)].concat();
    let e = decode(&envelope("v1", "ConfigMap", &cm)).unwrap_err();
    let DecodeError::Malformed { path, message } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(path, "data");
    assert!(message.contains("runs past the end"), "{message}");

    // metadata.name sent as a varint.
    let cm = len_field(1, &int_field(1, 7));
    let e = decode(&envelope("v1", "ConfigMap", &cm)).unwrap_err();
    assert!(
        matches!(&e, DecodeError::Malformed { path, .. } if path == "metadata.name"),
        "{e:?}"
    );

    // A Pod's second container has a port whose containerPort is a string: the path has
    // the indices.
    let c0 = len_field(1, b"a");
    let c1 = [len_field(1, b"b"), len_field(6, &len_field(3, b"80"))].concat();
    let spec = [len_field(2, &c0), len_field(2, &c1)].concat();
    let pod = [len_field(1, &len_field(1, b"p")), len_field(2, &spec)].concat();
    let e = decode(&envelope("v1", "Pod", &pod)).unwrap_err();
    assert!(
        matches!(&e, DecodeError::Malformed { path, .. } if path == "spec.containers[1].ports[0].containerPort"),
        "{e:?}"
    );

    // Truncated in the middle of the envelope, and invalid UTF-8 in a string.
    // (Cut right after the TypeMeta, the body is a complete Namespace with no fields.)
    let whole = envelope("v1", "Namespace", &len_field(1, &len_field(1, b"ns")));
    let type_meta_end = envelope("v1", "Namespace", &[]).len() - 2;
    for cut in (4..whole.len()).filter(|c| *c != type_meta_end) {
        assert!(decode(&whole[..cut]).is_err(), "cut at {cut}");
    }
    let bad = envelope(
        "v1",
        "Namespace",
        &len_field(1, &len_field(1, &[0xff, 0xfe])),
    );
    let e = decode(&bad).unwrap_err();
    assert!(
        e.to_string().contains("metadata.name") && e.to_string().contains("UTF-8"),
        "{e}"
    );
}

#[test]
fn content_encoding_is_refused() {
    let tm = [len_field(1, b"v1"), len_field(2, b"Pod")].concat();
    let body = [b"k8s\0".to_vec(), len_field(1, &tm), len_field(3, b"gzip")].concat();
    assert!(matches!(decode(&body), Err(DecodeError::Unsupported(_))));
}

#[test]
fn schema_tables_are_consistent() {
    for (i, m) in schema::MESSAGES.iter().enumerate() {
        assert!(
            m.fields.windows(2).all(|w| w[0].tag < w[1].tag),
            "{} ({i}): fields not sorted by tag",
            m.name
        );
        for f in m.fields {
            if let Ty::Message(j) = f.ty {
                assert!(j < schema::MESSAGES.len(), "{}.{}", m.name, f.json);
            }
            assert_eq!(
                f.json.is_empty(),
                f.label == Label::Inline,
                "{}.{}",
                m.name,
                f.tag
            );
        }
    }
    for (av, kind, root) in schema::ROOTS {
        assert!(
            schema::MESSAGES[*root].name.ends_with(&format!(".{kind}")),
            "{av} {kind}"
        );
    }
}
