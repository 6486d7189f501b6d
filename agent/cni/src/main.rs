//! `skiff-cni`: the CNI plugin binary. Config on stdin, result or error object on stdout,
//! diagnostics on stderr, exit status 0 only on success (CNI spec, "Protocol").

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let env: Vec<(String, String)> = std::env::vars().collect();
    let outcome = match read {
        Ok(_) => skiff_cni::run(&env, &stdin),
        Err(e) => skiff_cni::Outcome::error(
            &skiff_cni::error::CniError::new(
                skiff_cni::error::IO_FAILURE,
                "reading the network configuration from stdin",
                e.to_string(),
            ),
            skiff_cni::LATEST,
        ),
    };
    let mut out = std::io::stdout().lock();
    if let Some(json) = &outcome.stdout {
        let _ = writeln!(out, "{json}");
    }
    let _ = out.flush();
    if let Some(msg) = &outcome.stderr {
        eprintln!("skiff-cni: {msg}");
    }
    std::process::exit(outcome.exit_code);
}
