//! Herald's integration suite: one binary, one module per concern, each test against a real app
//! (or store) on SQLite, or on PostgreSQL when `HERALD_TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used)]

mod auth;
mod batch;
mod cli;
mod crash;
mod dashboard;
mod delivery;
mod docs;
mod endpoints;
mod errors;
mod event_types;
mod filters;
mod helpers;
mod ingest;
mod interop;
mod maintenance;
mod observability;
mod ops;
mod pagination;
mod policy;
mod properties;
mod receiver;
mod replay;
mod replicas;
mod scenario;
mod security;
mod signatures;
mod storage;
mod stress;
mod tenants;
mod tokens;
mod tools;
mod trace;
