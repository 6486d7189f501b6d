//! `cargo xtask test`: the one test command (README, .ci/run).

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use crate::{
    cmd::{cargo, is_root},
    lint, setup,
};

/// Totals parsed from libtest's `test result:` lines.
#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.ignored += o.ignored;
    }
}

pub fn run(no_lint: bool) -> anyhow::Result<()> {
    setup::ensure()?;
    if !no_lint {
        lint::run()?;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");

    eprintln!("\n== unit tests (host crates) ==");
    // --no-fail-fast: one failing crate must not hide the results of the others.
    let unit = cargo_test(cargo().args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "skiff-datapath",
        "--exclude",
        "skiff-tests",
    ]))?;

    eprintln!("\n== privileged tests (BPF_PROG_TEST_RUN, network namespaces) ==");
    let mut privileged = Tally::default();
    let mut skipped_suite = None;
    match missing_privileges() {
        None => {
            // The agent-with-API tests start the real API server binary; agent_node.rs
            // also runs the skiff-agent binary, which installs skiff-cni from next to it;
            // the pod runtime tests invoke the real skiff-cni binary.
            crate::cmd::run(cargo().args([
                "build",
                "-p",
                "skiff-controlplane",
                "-p",
                "skiff-agent",
                "-p",
                "skiff-cni",
            ]))?;
            privileged = cargo_test(cargo().args(["test", "--no-fail-fast", "-p", "skiff-tests"]))?
        }
        Some(why) => {
            let count = count_tests("skiff-tests")?;
            eprintln!("\n{}", "!".repeat(78));
            eprintln!("!! SKIPPED: the privileged suite ({count} tests) did not run: {why}.");
            eprintln!("!! Run `cargo xtask test` as root on Linux >= 5.15 with BTF to run it.");
            eprintln!("{}\n", "!".repeat(78));
            if in_ci {
                bail!("CI=true and the privileged suite cannot run ({why}): that is a failure, not a pass");
            }
            skipped_suite = Some(count);
        }
    }

    let mut total = unit;
    total.add(privileged);
    let skipped = total.ignored + skipped_suite.unwrap_or(0);
    eprintln!(
        "\nunit: {} passed, {} failed; privileged: {}",
        unit.passed,
        unit.failed,
        match skipped_suite {
            Some(n) => format!("SKIPPED ({n} tests)"),
            None => format!("{} passed, {} failed", privileged.passed, privileged.failed),
        }
    );
    println!(
        "xtask: {} passed, {} failed, {} skipped",
        total.passed, total.failed, skipped
    );
    if total.failed > 0 {
        bail!("{} tests failed", total.failed);
    }
    if total.ignored > 0 {
        bail!(
            "{} tests are #[ignore]d: skiff does not count skipped tests as passed",
            total.ignored
        );
    }
    Ok(())
}

/// Runs a `cargo test` command, streaming its output and summing its `test result:` lines.
fn cargo_test(c: &mut Command) -> anyhow::Result<Tally> {
    eprintln!(
        "$ cargo {}",
        c.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = c
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut tally = Tally::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(t) = parse_result_line(&line) {
            tally.add(t);
        }
    }
    let status = child.wait()?;
    if !status.success() && tally.failed == 0 {
        bail!("cargo test failed before running tests ({status}); see the output above");
    }
    Ok(tally)
}

/// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`
fn parse_result_line(line: &str) -> Option<Tally> {
    let rest = line.strip_prefix("test result: ")?;
    let mut t = Tally::default();
    for part in rest.split(';') {
        let words: Vec<&str> = part.split_whitespace().collect();
        let (n, what) = match words.as_slice() {
            [_, n, what, ..] if n.parse::<u64>().is_ok() => (n, what),
            [n, what, ..] => (n, what),
            _ => continue,
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match *what {
            "passed" => t.passed = n,
            "failed" => t.failed = n,
            "ignored" => t.ignored = n,
            _ => {}
        }
    }
    Some(t)
}

/// Number of tests in a package, without running them (`--list` needs no privileges).
fn count_tests(package: &str) -> anyhow::Result<u64> {
    let out = cargo()
        .args(["test", "-p", package, "--", "--list", "--format", "terse"])
        .stderr(Stdio::inherit())
        .output()
        .context("listing tests")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(": test"))
        .count() as u64)
}

/// Why the privileged suite cannot run here, or `None`. Mirrors
/// `skiff_tests::privilege::missing_privileges`, which each test checks again.
fn missing_privileges() -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    if !Path::new("/sys/fs/bpf").exists() {
        return Some("bpffs is not mounted at /sys/fs/bpf".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        let t = parse_result_line(
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.42s",
        )
        .unwrap();
        assert_eq!((t.passed, t.failed, t.ignored), (3, 0, 1));
        let t = parse_result_line("test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.2s").unwrap();
        assert_eq!((t.passed, t.failed, t.ignored), (2, 1, 0));
        assert!(parse_result_line("running 3 tests").is_none());
    }
}
