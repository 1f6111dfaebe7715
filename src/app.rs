//! Wiring: `App::build` opens and migrates the store, makes sure an admin token exists, and binds
//! the listener; `App::run` serves until the cancellation token fires, then drains.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::domain::event_type::EventType;
use crate::domain::time::now_micros;
use crate::domain::token::hash_token;
use crate::http::{self, AppState};
use crate::maintenance::Jobs;
use crate::storage::{self, Store, StoreError};

/// A built, not yet running, Herald.
pub struct App {
    listener: TcpListener,
    state: AppState,
    bootstrap_token: Option<String>,
    dispatcher: Option<Dispatcher>,
    jobs: Jobs,
}

impl App {
    /// Connects and migrates the store, creates the first admin token when none is configured or
    /// stored, and binds the listen address.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let store = storage::connect(&config).await?;
        store.migrate().await.context("could not apply database migrations")?;
        check_secret_keys(&config, store.as_ref()).await?;
        let bootstrap_token = ensure_admin_token(&config, store.as_ref()).await?;
        store.set_operations_tenant(config.operations.tenant.clone());
        if config.operations.tenant.is_some() {
            register_operational_event_types(store.as_ref()).await?;
        }
        let jobs = Jobs::new(&config, store.clone());
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("could not listen on `{}`", config.listen))?;
        let admin_hash = config.admin_token.as_ref().map(|t| hash_token(&t.0));
        let wakeup = Arc::new(Notify::new());
        let traces = crate::telemetry::traces::Traces::start(config.telemetry.traces_endpoint().as_deref())
            .context("could not set up the OTLP trace export")?;
        let dispatcher = if config.dispatcher_enabled {
            Some(Dispatcher::new(&config, store.clone(), wakeup.clone(), traces.clone())?)
        } else {
            None
        };
        let metrics = crate::metrics::install()?;
        let limits = Arc::new(crate::http::extract::RateLimits::new(&config.security));
        let committer = crate::ingest::Committer::start(
            store.clone(),
            dispatcher.as_ref().map(Dispatcher::handoff),
            wakeup.clone(),
        );
        let validators = Arc::default();
        let state = AppState {
            store,
            config: Arc::new(config),
            admin_hash,
            wakeup,
            metrics,
            limits,
            committer,
            validators,
            lookups: Arc::default(),
            traces,
        };
        Ok(App { listener, state, bootstrap_token, dispatcher, jobs })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.state.config.listen)
    }

    /// The admin token created by this start, if one was (shown once).
    pub fn bootstrap_token(&self) -> Option<&str> {
        self.bootstrap_token.as_deref()
    }

    /// Takes the dispatcher out, so that the caller drives it (tests step it with
    /// `Dispatcher::dispatch_once`); `run` then serves without one, as `--role api` does.
    pub fn take_dispatcher(&mut self) -> Option<Dispatcher> {
        self.dispatcher.take()
    }

    /// Serves until `shutdown` is cancelled, then finishes in-flight requests, lets the
    /// dispatcher drain within its grace period, and closes the store.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let App { listener, state, dispatcher, jobs, .. } = self;
        let store = state.store.clone();
        let traces = state.traces.clone();
        let mut scheduler = jobs.start().await?;
        let dispatching = dispatcher.map(|d| supervise(d.run(shutdown.clone()), shutdown.clone()));
        let router = http::router(state);
        let signal = shutdown.clone();
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { signal.cancelled().await })
            .await
            .context("the HTTP server failed");
        shutdown.cancel();
        if let Err(error) = scheduler.shutdown().await {
            tracing::warn!(%error, "the job scheduler did not stop cleanly");
        }
        let dispatcher_died = match dispatching {
            Some(watch) => watch.await.unwrap_or(true),
            None => false,
        };
        // The last spans go out on the exporter's own thread.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        served?;
        if dispatcher_died {
            store.close().await;
            anyhow::bail!(
                "the dispatcher stopped unexpectedly; stopping so that a supervisor restarts Herald"
            );
        }
        store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs the dispatcher loop and watches it. A dispatcher that ends before `shutdown` (a panic,
/// or a return it should never make) is never silent: the failure is logged,
/// `herald_dispatcher_up` drops to 0 and `shutdown` is cancelled, so the process stops with an
/// error and its supervisor restarts it. Resolves to whether it died.
fn supervise(
    dispatcher: impl std::future::Future<Output = ()> + Send + 'static,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<bool> {
    let running = tokio::spawn(dispatcher);
    tokio::spawn(async move {
        let ended = running.await;
        if shutdown.is_cancelled() && ended.is_ok() {
            return false;
        }
        match ended {
            Err(error) => tracing::error!(%error, "the dispatcher panicked"),
            Ok(()) => tracing::error!("the dispatcher stopped before shutdown"),
        }
        metrics::gauge!(crate::metrics::DISPATCHER_UP).set(0.0);
        shutdown.cancel();
        true
    })
}

/// With no admin token configured and none stored, creates one and returns it (to print once).
async fn ensure_admin_token(config: &Config, store: &Store) -> anyhow::Result<Option<String>> {
    if config.admin_token.is_some() || store.count_admin_tokens().await? > 0 {
        return Ok(None);
    }
    let (_, secret) = http::tenants::issue_token(store, "bootstrap".to_owned(), None, None)
        .await
        .context("could not create the first admin token")?;
    Ok(Some(secret))
}

/// The event types of operational events, registered when an operations tenant is configured.
pub const OPERATIONAL_EVENT_TYPES: [(&str, &str); 5] = [
    ("endpoint.disabled", "An endpoint was disabled: {tenant_id, endpoint_id, reason, disabled_at}."),
    ("endpoint.enabled", "An endpoint was enabled again: {tenant_id, endpoint_id}."),
    (
        "endpoint.circuit_opened",
        "An endpoint's circuit opened; its backlog waits for a probe: {tenant_id, endpoint_id, opened_at, consecutive_failures, last_error}.",
    ),
    (
        "endpoint.circuit_closed",
        "An endpoint's circuit closed; its backlog flows again: {tenant_id, endpoint_id, closed_at, open_seconds}.",
    ),
    (
        "delivery.exhausted",
        "A delivery failed for good: {tenant_id, endpoint_id, event_id, delivery_id, attempts, last_error, suppressed?}.",
    ),
];

async fn register_operational_event_types(store: &Store) -> anyhow::Result<()> {
    let now = now_micros();
    for (name, description) in OPERATIONAL_EVENT_TYPES {
        let event_type = EventType {
            name: name.to_owned(),
            description: description.to_owned(),
            schema: None,
            archived: false,
            created_at: now,
            updated_at: now,
        };
        match store.insert_event_type(&event_type).await {
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(error) => {
                return Err(anyhow::Error::from(error).context("could not register operational event types"));
            }
        }
    }
    Ok(())
}

/// Warns once when secrets are stored in clear, and refuses to start when stored secrets were
/// sealed with a key that is not configured (every delivery to them would fail).
async fn check_secret_keys(config: &Config, store: &Store) -> anyhow::Result<()> {
    let cipher = config.cipher()?;
    if !cipher.enabled() {
        tracing::warn!(
            "no `secret_key` is configured: endpoint secrets and header values are stored unencrypted"
        );
    }
    let mut known: Vec<String> = cipher.key_id().map(str::to_owned).into_iter().collect();
    for previous in &config.previous_secret_keys {
        if let Ok(other) = crate::crypto::Cipher::new(Some(&previous.0), &[])
            && let Some(id) = other.key_id()
        {
            known.push(id.to_owned());
        }
    }
    let missing: Vec<String> =
        store.sealed_key_ids().await?.into_iter().filter(|id| !known.contains(id)).collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "stored secrets were encrypted with master key id(s) {} which are not configured: set `secret_key` (or `previous_secret_keys`) to that key",
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dispatcher_that_panics_stops_the_process() {
        let shutdown = CancellationToken::new();
        let watch = supervise(async { panic!("the dispatcher failed") }, shutdown.clone());
        assert!(watch.await.expect("the watcher ends"), "reported as died");
        assert!(shutdown.is_cancelled(), "the server is told to stop");
    }

    #[tokio::test]
    async fn a_dispatcher_that_returns_early_stops_the_process() {
        let shutdown = CancellationToken::new();
        let watch = supervise(async {}, shutdown.clone());
        assert!(watch.await.expect("the watcher ends"));
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn a_dispatcher_that_ends_at_shutdown_is_fine() {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let watch = supervise(async move { stop.cancelled().await }, shutdown.clone());
        shutdown.cancel();
        assert!(!watch.await.expect("the watcher ends"));
    }
}
