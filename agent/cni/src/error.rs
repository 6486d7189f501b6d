//! The CNI error object and the spec's well-known codes (SPEC.md "Error").

use serde_json::{json, Value};

/// 1: incompatible CNI version.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// 2: unsupported field in the network configuration.
pub const UNSUPPORTED_FIELD: u32 = 2;
/// 3: container unknown or does not exist (the runtime need not call DEL).
pub const UNKNOWN_CONTAINER: u32 = 3;
/// 4: invalid necessary environment variables.
pub const INVALID_ENV: u32 = 4;
/// 5: I/O failure.
pub const IO_FAILURE: u32 = 5;
/// 6: failed to decode content.
pub const DECODE: u32 = 6;
/// 7: invalid network config.
pub const INVALID_CONFIG: u32 = 7;
/// 11: try again later.
pub const TRY_AGAIN_LATER: u32 = 11;
/// 50: STATUS: the plugin is not available (cannot serve ADD).
pub const NOT_AVAILABLE: u32 = 50;
/// 100 and up are plugin-specific. 100: the attachment already exists (ADD twice for one
/// container and interface without DEL in between).
pub const ALREADY_ATTACHED: u32 = 100;
/// 101: CHECK found the attachment different from prevResult.
pub const CHECK_MISMATCH: u32 = 101;
/// 102: a netlink operation on the host or in the container failed.
pub const NETLINK_FAILURE: u32 = 102;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The spec's error object for stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

pub type Result<T> = std::result::Result<T, CniError>;
