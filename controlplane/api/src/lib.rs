//! Kubernetes API semantics for skiff's apiserver, with no IO: the HTTP server is built
//! on top of this crate and owns storage, watches and the network.
//!
//! | module | what it gives the server |
//! |---|---|
//! | [`resources`] | the served resources (upstream's discovery data), discovery documents, request-path parsing |
//! | [`selector`] | `labelSelector` / `metav1.LabelSelector` / `fieldSelector` parsing and matching |
//! | [`patch`] | JSON patch, JSON merge patch, strategic merge patch (with per-kind patch metadata) |
//! | [`apply`] | server-side apply, managedFields for Apply and Update, conflicts |
//! | [`defaults`] | upstream's defaulting per kind |
//! | [`validation`] | create and update validation with upstream's field errors |
//! | [`unknown_fields`] | `fieldValidation` (Strict / Warn / Ignore) |
//! | [`status`] | failure `Status` bodies (NotFound, AlreadyExists, Conflict, Invalid, ...) |
//! | [`table`] | `meta.k8s.io/v1` Tables for `kubectl get` (server-side printing) |
//! | [`field`], [`names`] | field errors and upstream's name/label validators |
//!
//! The order upstream's apiserver runs these in, which the server should keep:
//!
//! * **create** (`POST`): [`resources::parse_path`] → parse body →
//!   [`resources::ensure_namespace`] (and [`resources::ensure_name`] on `PUT`) → [`unknown_fields`]
//!   per `fieldValidation` (raw body: defaulting drops unknown fields) →
//!   [`defaults::apply_defaults`] → [`validation::validate`] → 422 via
//!   [`status::invalid`] or store, with [`apply::record_update`] (`old = None`).
//! * **update** (`PUT`): as create, then [`validation::validate_update`] against the
//!   stored object; a stale `metadata.resourceVersion` is
//!   [`status::resource_version_conflict`].
//! * **patch** (`PATCH`): [`patch::PatchType::from_content_type`] → [`patch::apply_patch`]
//!   on the stored object (or [`apply::apply`] for `apply-patch+yaml`) → unknown fields →
//!   defaults → `validate_update` → [`apply::record_update`] for non-apply patches.
//! * **list/watch**: [`selector::parse_label_selector`] and
//!   [`selector::parse_field_selector`] once per request, then `matches` per object;
//!   with a Table `Accept`, [`table::table`] for a list, and a one-row
//!   [`table::table`] as the object of each watch event (upstream sends the column
//!   definitions with the first event only: drop `columnDefinitions` after it).

pub mod apply;
pub mod defaults;
pub mod field;
pub mod names;
pub mod patch;
pub mod rbac;
pub mod resources;
pub mod selector;
pub mod status;
pub mod table;
pub mod unknown_fields;
pub mod validation;
