//! `herald receive`: a local receiving endpoint, for trying Herald out and for the benchmark.
//! It verifies signatures when given the secret, records when each event arrived, and can
//! misbehave on purpose: an error rate, a fixed status, a delay, hanging, or resetting the
//! connection before any status line is written (the sender sees a connection error, as when a
//! load balancer or a crashing server drops it); and it can be taken down for a while, answering
//! 503 to everything (an outage on the receiving side).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::domain::time::now_micros;

/// How the receiver answers.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Verify `webhook-signature` with this `whsec_…` secret.
    pub secret: Option<String>,
    /// Share of requests answered 500 (0.0–1.0).
    pub fail_rate: f64,
    /// Answer every request with this status instead of 200.
    pub status: Option<u16>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Share of requests never answered (the sender's timeout cuts them off).
    pub hang_rate: f64,
    /// Share of requests whose connection is reset before the status line is written.
    pub reset_rate: f64,
    /// Print one line per request.
    pub print: bool,
}

/// What the receiver has seen.
#[derive(Default)]
pub struct Counters {
    /// Requests received.
    pub requests: AtomicU64,
    /// Events answered 2xx (a batch request counts each of its events).
    pub accepted: AtomicU64,
    /// Batch requests received (a JSON array of envelopes, `webhook-id` `bat_…`).
    pub batches: AtomicU64,
    /// Requests whose signature did not verify (only with a secret).
    pub invalid: AtomicU64,
    /// Requests answered 503 because the receiver was down ([`Receiver::set_down`]).
    pub refused: AtomicU64,
    /// Every request, in arrival order.
    pub arrivals: Mutex<Vec<Arrival>>,
}

/// One event the receiver saw: a request, or one event of a batch request.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// The event id (a request's `webhook-id`, or the `id` of an envelope in a batch).
    pub id: String,
    /// The request path (tells endpoints sharing a receiver apart).
    pub path: String,
    /// Unix µs.
    pub at: i64,
    /// Answered 2xx (not failed, reset or hung).
    pub ok: bool,
}

struct Shared {
    behaviour: Behaviour,
    counters: Arc<Counters>,
    verifier: Option<standard_verifier::Verifier>,
    down: Arc<AtomicBool>,
}

/// A running receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it has seen.
    pub counters: Arc<Counters>,
    stop: CancellationToken,
    down: Arc<AtomicBool>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Receiver {
    /// Starts listening on `listen` (port 0 picks a free one).
    pub async fn start(listen: SocketAddr, behaviour: Behaviour) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let verifier = behaviour.secret.as_deref().map(standard_verifier::Verifier::new);
        let down = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared { behaviour, counters: counters.clone(), verifier, down: down.clone() });
        let router = Router::new().fallback(receive).with_state(shared);
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let listener = ResetListener(listener);
        tokio::spawn(async move {
            let _ = axum::serve(listener, router.into_make_service_with_connect_info::<ResetSwitch>())
                .with_graceful_shutdown(async move { signal.cancelled().await })
                .await;
        });
        Ok(Receiver { addr, counters, stop, down })
    }

    /// The receiver's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Takes the receiver down (every request answered 503 at once, as an outage would) or
    /// brings it back to its [`Behaviour`].
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(switch): ConnectInfo<ResetSwitch>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = now_micros();
    let started = Instant::now();
    let counters = &shared.counters;
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let behaviour = &shared.behaviour;
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
    let verified = shared.verifier.as_ref().map(|v| v.verify(&headers, &body));
    if verified == Some(false) {
        counters.invalid.fetch_add(1, Ordering::Relaxed);
    }
    let batch = batch_ids(&id, &body);
    if batch.is_some() {
        counters.batches.fetch_add(1, Ordering::Relaxed);
    }
    let events = batch.unwrap_or_else(|| vec![id.clone()]);
    let arrive = |ok: bool| {
        if let Ok(mut arrivals) = counters.arrivals.lock() {
            arrivals.extend(events.iter().map(|event| Arrival {
                id: event.clone(),
                path: uri.path().to_owned(),
                at: arrived,
                ok,
            }));
        }
    };
    if shared.down.load(Ordering::Relaxed) {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        if behaviour.print {
            println!("{id} down answer=503");
        }
        arrive(false);
        return (StatusCode::SERVICE_UNAVAILABLE, "").into_response();
    }
    let roll = |rate: f64| rate > 0.0 && rand::random::<f64>() < rate;
    let hang = roll(behaviour.hang_rate);
    if !hang && !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    let reset = !hang && roll(behaviour.reset_rate);
    let status = if roll(behaviour.fail_rate) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        behaviour.status.and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::OK)
    };
    let ok = status.is_success() && !reset && !hang;
    if ok {
        counters.accepted.fetch_add(events.len() as u64, Ordering::Relaxed);
    }
    arrive(ok);
    if behaviour.print {
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        // A batch: its first envelope stands for it.
        let envelope = if parsed.is_array() { &parsed[0] } else { &parsed };
        let event = if parsed.is_array() {
            format!("batch of {} ({})", events.len(), envelope["event"].as_str().unwrap_or("-"))
        } else {
            envelope["event"].as_str().unwrap_or("-").to_owned()
        };
        let latency = envelope["timestamp"]
            .as_str()
            .and_then(|t| crate::domain::time::parse_rfc3339(t).ok())
            .map(|accepted| format!("{:.1}ms", (arrived - accepted) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let check = match verified {
            None => "unchecked",
            Some(true) => "verified",
            Some(false) => "INVALID",
        };
        let answer = if hang {
            "hang".to_owned()
        } else if reset {
            "reset".to_owned()
        } else {
            status.as_u16().to_string()
        };
        println!(
            "{id} {event} {check} latency={latency} answer={answer} took={}ms",
            started.elapsed().as_millis()
        );
    }
    if hang {
        std::future::pending::<()>().await;
    }
    if reset {
        // The connection fails its next write, before hyper writes the status line, and is
        // closed with SO_LINGER 0: the sender reads a TCP reset, not an answer.
        switch.0.store(true, Ordering::Relaxed);
    }
    (status, "").into_response()
}

/// The event ids of a batch request (`webhook-id` `bat_…`, a JSON array of envelopes), in
/// order; `None` for a request of one event.
pub fn batch_ids(webhook_id: &str, body: &[u8]) -> Option<Vec<String>> {
    if !webhook_id.starts_with("bat_") {
        return None;
    }
    let envelopes: Vec<serde_json::Value> = serde_json::from_slice(body).ok()?;
    Some(envelopes.iter().map(|envelope| envelope["id"].as_str().unwrap_or("-").to_owned()).collect())
}

/// Accepts connections whose socket the handler can order reset.
struct ResetListener(TcpListener);

/// A connection that fails every operation once its switch is on, closing with a TCP reset.
struct Resettable {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

/// The handler's handle on its connection's reset switch.
#[derive(Clone)]
struct ResetSwitch(Arc<AtomicBool>);

impl Listener for ResetListener {
    type Io = Resettable;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Resettable, SocketAddr) {
        let (stream, addr) = Listener::accept(&mut self.0).await;
        (Resettable { stream, reset: Arc::new(AtomicBool::new(false)) }, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, ResetListener>> for ResetSwitch {
    fn connect_info(stream: IncomingStream<'_, ResetListener>) -> Self {
        ResetSwitch(stream.io().reset.clone())
    }
}

impl Resettable {
    /// When the switch is on: arm the reset and fail.
    fn check(&self) -> io::Result<()> {
        if self.reset.load(Ordering::Relaxed) {
            let _ = self.stream.set_zero_linger();
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset on purpose"));
        }
        Ok(())
    }
}

impl AsyncRead for Resettable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Resettable {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Standard Webhooks verification for the receiver (any matching `v1,` entry, 5-minute tolerance).
mod standard_verifier {
    use axum::http::HeaderMap;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use crate::domain::signing::{secret_key, sign};

    /// What `--secret` gave: a `whsec_` secret verifies `v1` entries, a `whpk_` public key `v1a`.
    pub enum Verifier {
        Hmac(Vec<u8>),
        Ed25519(Option<ed25519_dalek::VerifyingKey>),
    }

    impl Verifier {
        pub fn new(secret: &str) -> Verifier {
            match secret.strip_prefix(crate::domain::signing::PUBLIC_KEY_PREFIX) {
                Some(encoded) => Verifier::Ed25519(
                    STANDARD
                        .decode(encoded)
                        .ok()
                        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                        .and_then(|bytes| ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()),
                ),
                None => Verifier::Hmac(secret_key(secret)),
            }
        }

        pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> bool {
            let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let (Some(id), Some(timestamp), Some(signatures)) =
                (get("webhook-id"), get("webhook-timestamp"), get("webhook-signature"))
            else {
                return false;
            };
            let Ok(timestamp) = timestamp.parse::<i64>() else { return false };
            if (chrono::Utc::now().timestamp() - timestamp).abs() > 300 {
                return false;
            }
            let key = match self {
                Verifier::Hmac(key) => key,
                Verifier::Ed25519(key) => return verify_v1a(key.as_ref(), signatures, id, timestamp, body),
            };
            let expected = sign(key, id, timestamp, body);
            let expected = expected.as_bytes();
            signatures.split(' ').any(|entry| {
                entry.len() == expected.len()
                    && subtle::ConstantTimeEq::ct_eq(entry.as_bytes(), expected).into()
                    && STANDARD.decode(entry.trim_start_matches("v1,")).is_ok()
            })
        }
    }

    /// Whether one `v1a,` entry is an ed25519 signature of `{id}.{timestamp}.{body}` by `key`.
    fn verify_v1a(
        key: Option<&ed25519_dalek::VerifyingKey>,
        signatures: &str,
        id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> bool {
        let Some(key) = key else { return false };
        let message = [id.as_bytes(), b".", timestamp.to_string().as_bytes(), b".", body].concat();
        signatures.split(' ').filter_map(|entry| entry.strip_prefix("v1a,")).any(|encoded| {
            STANDARD.decode(encoded).ok().and_then(|bytes| <[u8; 64]>::try_from(bytes).ok()).is_some_and(
                |bytes| key.verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&bytes)).is_ok(),
            )
        })
    }
}
