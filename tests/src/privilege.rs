//! What the privileged tests need from the machine, checked up front so a missing
//! capability fails with a reason instead of an obscure EPERM deep inside a test.

use std::path::Path;

/// Returns why privileged tests cannot run here, or `None` if they can.
pub fn missing_privileges() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "not running as root (BPF, netns and tc need CAP_BPF/CAP_NET_ADMIN/CAP_SYS_ADMIN)"
                .into(),
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("kernel has no BTF (/sys/kernel/btf/vmlinux missing)".into());
    }
    if !Path::new("/sys/fs/bpf").exists() {
        return Some("bpffs is not mounted at /sys/fs/bpf".into());
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2 (`ip`) is not installed".into());
    }
    None
}

/// Panics with the reason if privileged tests cannot run. `cargo xtask test` checks the
/// same thing first and reports the whole suite as SKIPPED; reaching this panic means the
/// suite was started some other way on a machine that cannot run it.
pub fn require_privileges() {
    if let Some(why) = missing_privileges() {
        panic!(
            "privileged test cannot run: {why}. Run the suite through `cargo xtask test` as root."
        );
    }
}
