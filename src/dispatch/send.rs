//! One attempt on the wire: sign the stored envelope, POST it with reqwest over rustls (shared
//! pool, keep-alive, no redirects, no proxy), keep at most 8 KiB of the answer, classify errors.

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT};

use super::net_guard::{Guard, GuardedResolver};
use crate::config::Config;
use crate::domain::retry::{AttemptResult, ErrorKind, parse_retry_after};
use crate::domain::signing::{Scheme, hex_signature, signature_header};
use crate::storage::Claimed;

/// Most response body bytes kept.
pub const MAX_RESPONSE_BODY: usize = 8 * 1024;

/// The outbound HTTP side, shared by every attempt of a process.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    guard: Arc<Guard>,
    user_agent: HeaderValue,
    hex_header: Option<(HeaderName, String)>,
}

/// What one attempt produced.
#[derive(Clone, Debug)]
pub struct Sent {
    /// Status and error classification.
    pub result: AttemptResult,
    /// How long it took.
    pub duration: Duration,
    /// Up to 8 KiB of the body, lossy UTF-8.
    pub response_body: Option<String>,
    /// Failure detail in words.
    pub error: Option<String>,
}

impl Sender {
    /// Builds the shared client; `allow` are the CIDR ranges its guard opens (ignored in dev mode).
    pub fn new(config: &Config, allow: Vec<ipnet::IpNet>) -> anyhow::Result<Sender> {
        // Each attempt runs under its endpoint's timeout (`send`); the client's bound is the
        // longest any endpoint may ask for.
        let timeout = config.delivery.timeout_max();
        let guard = Arc::new(Guard { open: config.dev, allow });
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver::new(guard.clone())))
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(90))
            // As many idle connections per host as requests may be in flight at once: with fewer,
            // a burst to one host (several endpoints on one receiver) closed the connections
            // past the limit as their answers came in and opened new ones for the next requests.
            .pool_max_idle_per_host(config.delivery.max_in_flight)
            .tcp_nodelay(true)
            .build()?;
        let user_agent = HeaderValue::from_str(&format!("Herald/{}", env!("CARGO_PKG_VERSION")))?;
        let hex_header = match &config.signing.hex_header {
            Some(name) => Some((HeaderName::from_bytes(name.as_bytes())?, config.signing.hex_prefix.clone())),
            None => None,
        };
        Ok(Sender { client, guard, user_agent, hex_header })
    }

    /// The headers of one attempt: content type, user agent, the Standard Webhooks trio (its
    /// `webhook-id` the event's id, or a batch request's `bat_…` id), the optional classic header,
    /// then the endpoint's custom headers (which cannot replace ours).
    pub fn headers(
        &self,
        claimed: &Claimed,
        webhook_id: &str,
        traceparent: Option<&str>,
        body: &[u8],
        unix_seconds: i64,
        now_micros: i64,
    ) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, self.user_agent.clone());
        let secrets = &claimed.secrets;
        let mut active = vec![secrets.current.as_str()];
        if let (Some(previous), Some(expires)) = (&secrets.previous, secrets.previous_expires_at)
            && expires > now_micros
        {
            active.push(previous);
        }
        let signature = signature_header(&active, webhook_id, unix_seconds, body);
        for (name, value) in [
            ("webhook-id", webhook_id.to_owned()),
            ("webhook-timestamp", unix_seconds.to_string()),
            ("webhook-signature", signature),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        // The hex header is HMAC only: the current secret, or after a switch to ed25519 the
        // previous HMAC secret while its grace lasts.
        if let Some((name, prefix)) = &self.hex_header
            && let Some(hmac) = active.iter().find(|s| Scheme::of(s) == Scheme::HmacSha256)
            && let Ok(value) = HeaderValue::from_str(&hex_signature(hmac, body, prefix))
        {
            headers.insert(name.clone(), value);
        }
        // The producer's trace, continued by this attempt's span (DESIGN §16).
        if let Some(Ok(value)) = traceparent.map(HeaderValue::from_str) {
            headers.insert(HeaderName::from_static("traceparent"), value);
            if let Some(Ok(value)) =
                claimed.trace.as_ref().and_then(|t| t.state.as_deref()).map(HeaderValue::from_str)
            {
                headers.insert(HeaderName::from_static("tracestate"), value);
            }
        }
        for (name, value) in &claimed.headers {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
                && !headers.contains_key(&name)
            {
                headers.insert(name, value);
            }
        }
        headers
    }

    /// Makes one attempt: `body` (an envelope, or a batch's array of them) to `claimed`'s
    /// endpoint as it was claimed. Never fails: every problem is an outcome.
    pub async fn send(
        &self,
        claimed: &Claimed,
        webhook_id: &str,
        traceparent: Option<&str>,
        body: String,
        timeout: Duration,
    ) -> Sent {
        if let Err(blocked) = self.guard.check_url(&claimed.url) {
            return Sent {
                result: AttemptResult {
                    status: None,
                    error: Some(ErrorKind::BlockedAddress),
                    retry_after: None,
                },
                duration: Duration::ZERO,
                response_body: None,
                error: Some(blocked.to_string()),
            };
        }
        let now = chrono::Utc::now();
        let headers = self.headers(
            claimed,
            webhook_id,
            traceparent,
            body.as_bytes(),
            now.timestamp(),
            now.timestamp_micros(),
        );
        let started = Instant::now();
        let request = self.client.post(&claimed.url).headers(headers).body(body);
        let attempt = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let retry_after = if matches!(status, 429 | 503) {
                response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, chrono::Utc::now()))
            } else {
                None
            };
            let mut response = response;
            let mut kept = Vec::new();
            while kept.len() < MAX_RESPONSE_BODY {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        let room = MAX_RESPONSE_BODY - kept.len();
                        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                    // The status line decides; a body cut short is not a failure.
                    Ok(None) | Err(_) => break,
                }
            }
            Ok::<_, reqwest::Error>((status, retry_after, kept))
        };
        let outcome = tokio::time::timeout(timeout, attempt).await;
        let duration = started.elapsed();
        match outcome {
            Ok(Ok((status, retry_after, kept))) => {
                let ok = (200..300).contains(&status);
                Sent {
                    result: AttemptResult {
                        status: Some(status),
                        error: (!ok).then_some(ErrorKind::HttpStatus),
                        retry_after,
                    },
                    duration,
                    response_body: Some(String::from_utf8_lossy(&kept).into_owned()),
                    error: (!ok).then(|| format!("HTTP {status}")),
                }
            }
            Ok(Err(error)) => {
                let kind = classify(&error);
                Sent {
                    result: AttemptResult { status: None, error: Some(kind), retry_after: None },
                    duration,
                    response_body: None,
                    error: Some(describe(kind, &error.without_url())),
                }
            }
            Err(_) => Sent {
                result: AttemptResult { status: None, error: Some(ErrorKind::Timeout), retry_after: None },
                duration,
                response_body: None,
                error: Some(format!("timeout: no complete answer within {}ms", timeout.as_millis())),
            },
        }
    }
}

fn chain_text(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.to_lowercase()
}

/// Sorts a transport failure into the recorded `error_kind`.
fn classify(error: &reqwest::Error) -> ErrorKind {
    if error.is_timeout() {
        return ErrorKind::Timeout;
    }
    let text = chain_text(error);
    if text.contains("blocked address") {
        ErrorKind::BlockedAddress
    } else if text.contains("dns error")
        || text.contains("failed to lookup")
        || text.contains("name or service not known")
    {
        ErrorKind::Dns
    } else if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
        ErrorKind::Tls
    } else if error.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Other
    }
}

fn describe(kind: ErrorKind, error: &reqwest::Error) -> String {
    let mut text = format!("{}: {}", kind.as_str(), chain_text(error));
    text.truncate(1000);
    text
}
