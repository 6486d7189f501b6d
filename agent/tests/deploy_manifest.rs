//! deploy/skiff-agent.yaml passes only flags `skiff-agent run` has: a renamed flag
//! would otherwise surface as a crash-looping DaemonSet on someone's cluster.

use std::process::Command;

#[test]
fn every_flag_the_daemonset_passes_exists() {
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/skiff-agent.yaml"),
    )
    .unwrap();
    let flags: Vec<String> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- --"))
        .map(|f| f.split(['=', ' ']).next().unwrap().to_string())
        .collect();
    assert!(
        flags.len() >= 10,
        "found the DaemonSet's flags in the manifest: {flags:?}"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_skiff-agent"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for f in &flags {
        assert!(
            help.contains(&format!("--{f} ")) || help.contains(&format!("--{f}\n")),
            "deploy/skiff-agent.yaml passes --{f}, which `skiff-agent run` does not have"
        );
    }
}
