//! Container lifecycle hooks, as the kubelet runs them: `postStart` right after the
//! container's process starts (the container is Running only once it succeeded; when it
//! fails the container is killed and restarted by its policy, its termination message
//! `PostStartHookError: ...`), and `preStop` before the SIGTERM of a graceful stop, within
//! the grace period (the SIGTERM then gets what is left, at least 2 s, upstream's
//! minimum).
//!
//! Handlers: `exec` (in the container's namespaces, cgroup, root and mounts, like an exec
//! probe), `httpGet` (from the node, like an HTTP probe), `sleep`; `tcpSocket` is
//! deprecated upstream and fails with a message here.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Probe};

use crate::{
    probe::{Action, ProbeKind, ProbeSpec},
    prober,
};

/// How long a postStart hook may run (upstream has no bound; a hung hook would hold the
/// container in ContainerCreating forever).
pub const POST_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Upstream's `minimumGracePeriodInSeconds`: what SIGTERM gets after a slow preStop.
pub const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

/// One hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// exec or httpGet, run like the probe of the same kind.
    Action(Action),
    Sleep(Duration),
}

impl Hook {
    fn from_api(h: &LifecycleHandler) -> Hook {
        if let Some(s) = &h.sleep {
            return Hook::Sleep(Duration::from_secs(s.seconds.max(0) as u64));
        }
        if h.tcp_socket.is_some() {
            return Hook::Action(Action::Unsupported(
                "tcpSocket lifecycle hooks are deprecated and not supported; use exec, httpGet or sleep".into(),
            ));
        }
        // A probe with the same handler: the same conversion and the same runner.
        let as_probe = Probe {
            exec: h.exec.clone(),
            http_get: h.http_get.clone(),
            ..Default::default()
        };
        Hook::Action(ProbeSpec::from_api(&as_probe, ProbeKind::Liveness).action)
    }

    /// Runs the hook, at most `timeout`.
    pub async fn run(&self, timeout: Duration, target: &prober::Target) -> Result<(), String> {
        match self {
            Hook::Sleep(d) => {
                tokio::time::sleep((*d).min(timeout)).await;
                Ok(())
            }
            Hook::Action(a) => match prober::run(a, timeout, target).await {
                (true, _) => Ok(()),
                (false, why) => Err(why.unwrap_or_else(|| "the hook failed".into())),
            },
        }
    }
}

/// The container's postStart hook.
pub fn post_start(c: &Container) -> Option<Hook> {
    c.lifecycle
        .as_ref()?
        .post_start
        .as_ref()
        .map(Hook::from_api)
}

/// The container's preStop hook.
pub fn pre_stop(c: &Container) -> Option<Hook> {
    c.lifecycle.as_ref()?.pre_stop.as_ref().map(Hook::from_api)
}

/// What SIGTERM gets after a preStop hook that took `spent` of `grace`.
pub fn grace_after_hook(grace: Duration, spent: Duration) -> Duration {
    grace.saturating_sub(spent).max(MIN_GRACE_AFTER_HOOK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handlers_map_to_probe_actions_or_sleep() {
        let c: Container = serde_json::from_value(json!({"name": "c", "lifecycle": {
            "postStart": {"exec": {"command": ["touch", "/x"]}},
            "preStop": {"sleep": {"seconds": 3}},
        }}))
        .unwrap();
        assert_eq!(
            post_start(&c),
            Some(Hook::Action(Action::Exec {
                command: vec!["touch".into(), "/x".into()]
            }))
        );
        assert_eq!(pre_stop(&c), Some(Hook::Sleep(Duration::from_secs(3))));
        let t: Container = serde_json::from_value(
            json!({"name": "c", "lifecycle": {"preStop": {"tcpSocket": {"port": 80}}}}),
        )
        .unwrap();
        assert!(matches!(
            pre_stop(&t),
            Some(Hook::Action(Action::Unsupported(_)))
        ));
        let none: Container = serde_json::from_value(json!({"name": "c"})).unwrap();
        assert_eq!(post_start(&none), None);
        assert_eq!(
            grace_after_hook(Duration::from_secs(30), Duration::from_secs(5)),
            Duration::from_secs(25)
        );
        assert_eq!(
            grace_after_hook(Duration::from_secs(3), Duration::from_secs(5)),
            MIN_GRACE_AFTER_HOOK
        );
    }
}
