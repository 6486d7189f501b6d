//! BPF_PROG_TEST_RUN: run a loaded program on a packet without attaching it.

use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions, TestRunResult};

use super::DatapathError;

/// Room for a program to grow a packet (encapsulation, ICMP replies) in a test run.
const HEADROOM: usize = 256;

/// The outcome of one BPF_PROG_TEST_RUN.
#[derive(Clone, Debug)]
pub struct ProgRun {
    /// The program's return code (for tc: TC_ACT_OK = 0, TC_ACT_SHOT = 2, ...).
    pub return_code: u32,
    /// The packet as the program left it.
    pub packet_out: Vec<u8>,
    /// Mean time per run as measured by the kernel.
    pub duration: Duration,
}

/// Runs `program` (tc or XDP: both take packet data) on `packet`, `repeat` times.
pub(super) fn run<P>(
    program: &P,
    name: &str,
    packet: &[u8],
    repeat: u32,
) -> Result<ProgRun, DatapathError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; packet.len() + HEADROOM];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: repeat.max(1),
            ..TestRunOptions::default()
        })
        .map_err(|source| DatapathError::Program {
            program: name.to_owned(),
            action: "BPF_PROG_TEST_RUN",
            source: Box::new(source),
        })?;
    out.truncate(result.data_size_out as usize);
    Ok(ProgRun {
        return_code: result.return_value,
        packet_out: out,
        duration: result.duration,
    })
}
