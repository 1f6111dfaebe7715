//! The one recording webhook receiver of the tests: a real axum server on `127.0.0.1:0` that
//! keeps every request (path, headers, body, arrival time) and answers per path as programmed —
//! a status, a delay, a hang, Retry-After, a redirect — in a sequence per path or per event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

/// One programmed answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Never answer (until the receiver stops).
    pub hang: bool,
    pub retry_after: Option<String>,
    /// A `location` header (with a 3xx status: a redirect).
    pub location: Option<String>,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            hang: false,
            retry_after: None,
            location: None,
            body: String::new(),
        }
    }

    pub fn ok() -> Reply {
        Reply::status(200)
    }

    pub fn hang() -> Reply {
        Reply { hang: true, ..Reply::ok() }
    }

    /// A 302 to `location`.
    pub fn redirect(location: &str) -> Reply {
        Reply { location: Some(location.to_owned()), ..Reply::status(302) }
    }

    pub fn delayed(self, delay: Duration) -> Reply {
        Reply { delay, ..self }
    }

    pub fn retry_after(self, value: &str) -> Reply {
        Reply { retry_after: Some(value.to_owned()), ..self }
    }

    pub fn body(self, body: &str) -> Reply {
        Reply { body: body.to_owned(), ..self }
    }
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    #[expect(dead_code, reason = "kept for debugging output")]
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct PathState {
    /// Answers in order; the last one repeats.
    replies: Vec<Reply>,
    answered: usize,
    /// The sequence restarts for each event (`webhook-id`): answers given per event.
    per_event: Option<HashMap<String, usize>>,
    requests: Vec<Recorded>,
    in_flight: usize,
    max_in_flight: usize,
}

#[derive(Default)]
struct Shared {
    paths: Mutex<HashMap<String, PathState>>,
    /// Requests being answered on all paths now, and the most at once.
    total: Mutex<(usize, usize)>,
}

/// A running receiver; stops (and releases hanging requests) when dropped.
pub struct Receiver {
    pub base_url: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Receiver {
    /// Starts a receiver on a free port; every path answers 200 until told otherwise.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let router = Router::new().fallback({
            let shared = shared.clone();
            let stop = stop.clone();
            move |uri: Uri, headers: HeaderMap, body: Bytes| {
                handle(shared.clone(), stop.clone(), uri, headers, body)
            }
        });
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        });
        Receiver { base_url: format!("http://{addr}"), shared, stop }
    }

    /// The full URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Answers every request to `path` with `reply`.
    pub fn respond(&self, path: &str, reply: Reply) {
        self.respond_sequence(path, vec![reply]);
    }

    /// Answers requests to `path` with `replies` in order, the last one repeating.
    pub fn respond_sequence(&self, path: &str, replies: Vec<Reply>) {
        assert!(!replies.is_empty(), "a sequence needs at least one reply");
        let mut paths = self.shared.paths.lock().unwrap();
        let state = paths.entry(path.to_owned()).or_default();
        state.replies = replies;
        state.answered = 0;
        state.per_event = None;
    }

    /// Answers each event's requests to `path` (by `webhook-id`) with `replies` in order, the last
    /// one repeating: the sequence starts again for every event.
    pub fn respond_per_event(&self, path: &str, replies: Vec<Reply>) {
        self.respond_sequence(path, replies);
        self.shared.paths.lock().unwrap().entry(path.to_owned()).or_default().per_event =
            Some(HashMap::new());
    }

    /// Answers with these statuses in order, the last one repeating.
    pub fn respond_statuses(&self, path: &str, statuses: &[u16]) {
        self.respond_sequence(path, statuses.iter().map(|s| Reply::status(*s)).collect());
    }

    /// Every request to `path` so far, in arrival order.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        let paths = self.shared.paths.lock().unwrap();
        paths.get(path).map(|s| s.requests.clone()).unwrap_or_default()
    }

    /// The most requests to `path` that were being answered at once.
    pub fn max_in_flight(&self, path: &str) -> usize {
        let paths = self.shared.paths.lock().unwrap();
        paths.get(path).map_or(0, |s| s.max_in_flight)
    }

    /// Requests to `path` being answered now.
    pub fn in_flight(&self, path: &str) -> usize {
        let paths = self.shared.paths.lock().unwrap();
        paths.get(path).map_or(0, |s| s.in_flight)
    }

    /// The most requests that were being answered at once, all paths together.
    pub fn max_in_flight_total(&self) -> usize {
        self.shared.total.lock().unwrap().1
    }

    /// Waits until `path` has received at least `n` requests; fails after `timeout`.
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        crate::helpers::eventually(timeout, &format!("{n} requests to {path}"), || async {
            let requests = self.requests(path);
            (requests.len() >= n).then_some(requests)
        })
        .await
    }
}

async fn handle(
    shared: Arc<Shared>,
    stop: CancellationToken,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let reply = {
        let mut paths = shared.paths.lock().unwrap();
        let state = paths.entry(path.clone()).or_default();
        state.requests.push(Recorded {
            path: path.clone(),
            headers: headers.clone(),
            body,
            at: Instant::now(),
        });
        state.in_flight += 1;
        state.max_in_flight = state.max_in_flight.max(state.in_flight);
        let event = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let answered = match &mut state.per_event {
            Some(per_event) => per_event.entry(event).or_default(),
            None => &mut state.answered,
        };
        let turn = *answered;
        *answered += 1;
        let reply = match state.replies.len() {
            0 => Reply::ok(),
            n => state.replies[turn.min(n - 1)].clone(),
        };
        let mut total = shared.total.lock().unwrap();
        total.0 += 1;
        total.1 = total.1.max(total.0);
        reply
    };
    // Counts the request out of flight however it ends (answered, or dropped by the client).
    let _guard = InFlight { shared: shared.clone(), path };
    if reply.hang {
        stop.cancelled().await;
    } else if !reply.delay.is_zero() {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(reply.delay) => {}
        }
    }
    let status = StatusCode::from_u16(reply.status).expect("a valid status");
    let mut response = (status, reply.body).into_response();
    if let Some(value) = &reply.retry_after {
        response.headers_mut().insert("retry-after", HeaderValue::from_str(value).expect("header value"));
    }
    if let Some(value) = &reply.location {
        response.headers_mut().insert("location", HeaderValue::from_str(value).expect("header value"));
    }
    response
}

struct InFlight {
    shared: Arc<Shared>,
    path: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut paths) = self.shared.paths.lock()
            && let Some(state) = paths.get_mut(&self.path)
        {
            state.in_flight -= 1;
        }
        if let Ok(mut total) = self.shared.total.lock() {
            total.0 -= 1;
        }
    }
}
