//! Herald: outbound webhook delivery. A platform defines event types and emits events for its
//! tenants; Herald signs each one with the endpoint's own secret (Standard Webhooks) and delivers
//! it with a timeout, retries with backoff, and a record of every attempt.
//!
//! # Layout
//!
//! - [`config`] — layered configuration (defaults < file < `HERALD_…` env < flags), validated.
//! - [`app`] — wiring; `App::build` and `App::run`, which supervises the dispatcher.
//! - [`domain`] — pure types and rules, no I/O: ids, names, URLs, secrets, tokens, signatures,
//!   and every delivery rule (states, success, the attempt budget, Retry-After, stopping an
//!   endpoint, claim planning, the stats rollup, health). `docs/architecture.md` maps each rule
//!   to its function.
//! - [`crypto`] — secrets at rest: sealing and opening with the master keys.
//! - [`http`] — the REST API: one route table, handlers by resource, problem+json errors, OpenAPI, the
//!   dashboard.
//! - [`ingest`] — the group commit: ingest requests sharing one transaction.
//! - [`dispatch`] — the dispatcher: claim, send, record; `dispatch_once` is one cycle.
//! - [`storage`] — the `Store` over SQLite or PostgreSQL: statements written once, the real
//!   differences behind a small interface.
//! - [`maintenance`] — the scheduled jobs and their cron wiring.
//! - [`metrics`] — Prometheus metric names, the recorder, store-derived gauges.
//! - [`telemetry`] — logging.
//! - [`tools`] — `herald receive`, `herald bench`, `herald soak`.

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
