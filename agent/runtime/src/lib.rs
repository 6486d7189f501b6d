//! skiff's pod runtime (placeholder docs, completed below).

pub mod backoff;
pub mod lifecycle;
pub mod probe;
