//! core/v1 Events, written the way client-go's recorder does so `kubectl describe` and
//! `kubectl get events` show them: name `<object>.<unique hex>`, `involvedObject` with
//! uid and resourceVersion, `source.component`, `reportingComponent`; a repeat of the same
//! (object, type, reason, message) bumps `count` and `lastTimestamp` on the existing Event
//! instead of creating another (client-go's EventCorrelator, without its spam filter).
//!
//! Event writes are best effort: a failed write is logged, never fails a reconcile.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams, PostParams},
    Api, Client, Resource, ResourceExt as _,
};

/// `Normal` or `Warning`, upstream's two Event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    /// (uid or ns/name, type, reason, message) → (namespace, event name, count).
    seen: Arc<Mutex<HashMap<(String, EventType, String, String), (String, String, i32)>>>,
}

/// An `ObjectReference` to `obj` for `involvedObject`.
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: obj.meta().name.clone(),
        namespace: obj.meta().namespace.clone(),
        uid: obj.meta().uid.clone(),
        resource_version: obj.meta().resource_version.clone(),
        field_path: None,
    }
}

impl Recorder {
    pub fn new(client: Client, component: String) -> Recorder {
        Recorder {
            client,
            component,
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Records an Event about `obj` (best effort; errors are logged).
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        ty: EventType,
        reason: &str,
        message: &str,
    ) {
        self.publish_ref(reference(obj), ty, reason, message).await
    }

    /// Records an Event about the object `involved` names.
    pub async fn publish_ref(
        &self,
        involved: ObjectReference,
        ty: EventType,
        reason: &str,
        message: &str,
    ) {
        // Cluster-scoped objects (Nodes) get their Events in `default`, as upstream.
        let ns = involved
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let ident = involved.uid.clone().unwrap_or_else(|| {
            format!(
                "{}/{}",
                involved.namespace.clone().unwrap_or_default(),
                involved.name.clone().unwrap_or_default()
            )
        });
        let key = (ident, ty, reason.to_string(), message.to_string());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let now = Time(Timestamp::now());
        let existing = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some((ns_, name, count)) = existing {
            let patch = serde_json::json!({
                "count": count + 1,
                "lastTimestamp": now,
            });
            let api: Api<Event> = Api::namespaced(self.client.clone(), &ns_);
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, (ns_, name, count + 1));
                    return;
                }
                // Expired or deleted: fall through and create a new one.
                Err(e) => {
                    tracing::debug!("event {name}: bumping count failed ({e}); creating anew")
                }
            }
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "{}.{:x}",
            involved.name.clone().unwrap_or_else(|| "object".into()),
            nanos
        );
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: involved,
            type_: Some(ty.as_str().into()),
            reason: Some(reason.into()),
            message: Some(message.into()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now.clone()),
            event_time: None::<MicroTime>,
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ev).await {
            Ok(created) => {
                self.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, (ns, created.name_any(), 1));
            }
            Err(e) => tracing::warn!("could not record event {reason} ({message}): {e}"),
        }
    }
}
