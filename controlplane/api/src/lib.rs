//! Kubernetes API semantics for skiff's apiserver, with no IO: which resources exist
//! ([`resources`]), label and field selectors ([`selector`]), the four patch types
//! ([`patch`], [`apply`]), defaulting ([`defaults`]), validation ([`validation`]),
//! unknown-field detection for `fieldValidation` ([`unknown_fields`]) and the failure
//! `Status` bodies ([`status`]). The HTTP server is built on top of this crate.

pub mod apply;
pub mod defaults;
pub mod field;
pub mod names;
pub mod patch;
pub mod resources;
pub mod selector;
pub mod status;
pub mod unknown_fields;
pub mod validation;
