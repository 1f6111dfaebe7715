//! Herald: outbound webhook delivery. A platform defines event types and emits events for its
//! tenants; Herald signs each one with the endpoint's own secret (Standard Webhooks) and delivers
//! it with a timeout, retries with backoff, and a record of every attempt.
//!
//! # Layout
//!
//! - [`config`] — layered configuration (defaults < file < `HERALD_…` env < flags).
//! - [`app`] — wiring; `App::build` and `App::run`.
//! - [`domain`] — pure types and rules (ids, names, URLs, secrets, tokens).
//! - [`http`] — the REST API, one router per resource, problem+json errors, OpenAPI.
//! - [`metrics`] — Prometheus metric names and the recorder.
//! - [`dispatch`] — the dispatcher: claim, send, record.
//! - [`storage`] — the `Store` trait with SQLite and PostgreSQL backends.
//! - [`telemetry`] — logging.

pub mod app;
pub mod config;
pub mod crypto;
pub mod dispatch;
pub mod domain;
pub mod http;
pub mod ingest;
pub mod maintenance;
pub mod metrics;
pub mod storage;
pub mod telemetry;
pub mod tools;
