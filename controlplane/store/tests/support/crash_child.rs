//! Test support, not a tool: the child process of the redb crash test
//! (`acknowledged_writes_survive_kill_9`). It writes forever to the store at argv[1] and
//! prints `ack <key> <revision> <value>` only after each write returned, until the test
//! kills it with SIGKILL.

use std::{io::Write as _, sync::Arc};

use bytes::Bytes;
use skiff_store::{RedbConfig, RedbStore, Store, StoreError};

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: skiff-store-crash-child <store file>");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&path, RedbConfig::default()).expect("open store"));
        let mut out = std::io::stdout().lock();
        for i in 0u64.. {
            let key = format!("/crash/{}", i % 16);
            let value = Bytes::from(i.to_string());
            let rev = match store.create(&key, value.clone()).await {
                Ok(rev) => rev,
                Err(StoreError::AlreadyExists { .. }) => {
                    store.update(&key, value, None).await.expect("update")
                }
                Err(e) => panic!("writing {key}: {e}"),
            };
            // Printed only after the write returned: this is the acknowledgement.
            writeln!(out, "ack {key} {rev} {i}").expect("stdout");
            out.flush().expect("stdout");
        }
    });
}
