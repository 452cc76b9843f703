//! Firebreak's domain model: what the outside world sends (Alertmanager webhooks,
//! deploy events, gate results, log lines), how those become normalized events with
//! stable ids, and the pure decisions of incident correlation.
//!
//! This crate does no IO and needs no async runtime, so every rule here is tested
//! with plain unit tests and shared by the HTTP ingest and the bus consumers.

pub mod access;
pub mod action;
pub mod alertmanager;
pub mod correlation;
pub mod duration;
pub mod events;
pub mod flagd;
pub mod ids;
pub mod insights;
pub mod limits;
pub mod matcher;
pub mod metrics;
pub mod playbook;
pub mod response;
pub mod rollout;
pub mod secret;
pub mod timeline;
mod wire;

pub use events::{
    AlertEvent, DeployEvent, DeployStatus, DeployStrategy, EventKind, GateResult, GateVerdict,
    LogLine,
};
pub use wire::{decode, Decoded, WireError};
