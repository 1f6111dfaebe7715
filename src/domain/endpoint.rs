//! Endpoints: the URL rules, custom header rules, signing secrets and the endpoint record itself.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::Invalid;
use super::event_type::Pattern;

/// Longest accepted endpoint URL.
pub const MAX_URL_LEN: usize = 2048;
/// Longest accepted custom header value.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
/// Most entries in `event_types`.
pub const MAX_EVENT_TYPES: usize = 100;
/// Range of `max_in_flight`.
pub const MAX_IN_FLIGHT_RANGE: std::ops::RangeInclusive<i32> = 1..=1000;
/// Range of `rate_limit_per_second`.
pub const RATE_LIMIT_RANGE: std::ops::RangeInclusive<i32> = 1..=100_000;
/// Prefix of every signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Headers Herald sets itself, which custom headers may not replace.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "user-agent",
    "host",
    "connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "expect",
];

/// A stored endpoint, as the API shows it (the secret is fetched separately).
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// `ep_…`
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Free text.
    pub description: String,
    /// Subscription patterns; empty = every event type.
    pub event_types: Vec<String>,
    /// Extra headers sent with every attempt.
    pub headers: BTreeMap<String, String>,
    /// Whether deliveries are attempted.
    pub enabled: bool,
    /// Why it was disabled, when it is.
    pub disabled_reason: Option<String>,
    /// When it was disabled (Unix µs).
    pub disabled_at: Option<i64>,
    /// One delivery in flight at a time, in acceptance order.
    pub fifo: bool,
    /// Its owner's cap on attempts in flight; `None` = `[delivery] max_in_flight_per_endpoint`.
    pub max_in_flight: Option<i32>,
    /// Its adaptive in-flight window (`domain::concurrency`); `None` until first adapted.
    pub in_flight_window: Option<i32>,
    /// Its circuit breaker (`domain::breaker`).
    pub circuit: crate::domain::breaker::Circuit,
    /// Batched delivery (`domain::batch`); `None` = one event per request.
    pub batch: Option<crate::domain::batch::Batching>,
    /// Optional cap on requests per second.
    pub rate_limit_per_second: Option<i32>,
    /// Its own timeout and retry rules; unset members inherit the server's.
    pub delivery: crate::domain::policy::DeliveryPolicy,
    /// Payload filter (`domain::filter`), as written; `None` = every event of its types.
    pub filter: Option<serde_json::Value>,
    /// How its requests are signed (the scheme of its current key).
    pub signature_scheme: crate::domain::signing::Scheme,
    /// Unix µs.
    pub created_at: i64,
    /// Unix µs.
    pub updated_at: i64,
}

/// The endpoint's signing secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    /// The current secret, `whsec_…`.
    pub current: String,
    /// The previous secret while its grace period lasts.
    pub previous: Option<String>,
    /// When the previous secret stops signing (Unix µs).
    pub previous_expires_at: Option<i64>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("previous_expires_at", &self.previous_expires_at)
            .finish_non_exhaustive()
    }
}

/// A new random secret: `whsec_` + base64 of 32 random bytes.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// Checks a caller-supplied secret: `whsec_` + standard base64 of 24 to 64 bytes.
pub fn validate_secret(secret: &str) -> Result<(), String> {
    let Some(encoded) = secret.strip_prefix(SECRET_PREFIX) else {
        return Err("must start with `whsec_`".into());
    };
    match STANDARD.decode(encoded) {
        Ok(bytes) if (24..=64).contains(&bytes.len()) => Ok(()),
        Ok(_) => Err("must encode between 24 and 64 bytes after `whsec_`".into()),
        Err(_) => Err("must be `whsec_` followed by standard base64".into()),
    }
}

/// Checks an endpoint URL. `dev` allows `http://` and every address; otherwise literal IP
/// addresses must be public or inside `allow`.
pub fn validate_url(url: &str, dev: bool, allow: &[ipnet::IpNet]) -> Result<(), String> {
    let allowed = |ip: std::net::IpAddr| {
        let mapped = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4),
            std::net::IpAddr::V4(_) => None,
        };
        allow.iter().any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
    };
    if url.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    if url.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a valid absolute URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if dev => {}
        "http" => return Err("must use https:// (http:// is allowed only in dev mode)".into()),
        other if dev => return Err(format!("scheme `{other}` is not supported: use https:// or http://")),
        other => return Err(format!("scheme `{other}` is not supported: use https://")),
    }
    match parsed.host() {
        None => return Err("must name a host".into()),
        Some(_) if dev => {}
        Some(url::Host::Ipv4(ip)) if super::net::is_blocked(ip.into()) && !allowed(ip.into()) => {
            return Err(format!("address {ip} is private, loopback or reserved (allowed only in dev mode)"));
        }
        Some(url::Host::Ipv6(ip)) if super::net::is_blocked(ip.into()) && !allowed(ip.into()) => {
            return Err(format!("address {ip} is private, loopback or reserved (allowed only in dev mode)"));
        }
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                return Err("`localhost` is allowed only in dev mode".into());
            }
        }
        Some(_) => {}
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not contain credentials; use a custom header such as Authorization".into());
    }
    if parsed.fragment().is_some() {
        return Err("must not contain a fragment (#…)".into());
    }
    Ok(())
}

/// Checks custom headers: valid names and values, no CR/LF, nothing Herald sets itself.
pub fn validate_headers(invalid: &mut Invalid, headers: &BTreeMap<String, String>, max: usize) {
    if headers.len() > max {
        invalid.push("headers", format!("at most {max} custom headers are allowed"));
    }
    let mut seen = std::collections::HashSet::new();
    for (name, value) in headers {
        let field = format!("headers.{name}");
        let lower = name.to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
            invalid.push(&field, "is not a valid header name");
            continue;
        }
        if !seen.insert(lower.clone()) {
            invalid.push(&field, "is repeated with different letter case");
        }
        if lower.starts_with("webhook-") || RESERVED_HEADERS.contains(&lower.as_str()) {
            invalid.push(&field, "is set by Herald and cannot be overridden");
        }
        if value.len() > MAX_HEADER_VALUE_LEN {
            invalid.push(&field, format!("value must be at most {MAX_HEADER_VALUE_LEN} bytes"));
        }
        if value.contains(['\r', '\n', '\0']) || reqwest::header::HeaderValue::from_str(value).is_err() {
            invalid.push(&field, "value must be visible ASCII without CR or LF");
        }
    }
}

/// Parses and normalises subscription entries (duplicates dropped, order kept).
/// Returns the exact names, which the caller must check against the catalogue.
pub fn parse_event_types(invalid: &mut Invalid, entries: &[String]) -> (Vec<String>, Vec<String>) {
    if entries.len() > MAX_EVENT_TYPES {
        invalid.push("event_types", format!("at most {MAX_EVENT_TYPES} entries are allowed"));
    }
    let mut normalised = Vec::new();
    let mut exact = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match Pattern::parse(entry) {
            Ok(pattern) => {
                if normalised.contains(entry) {
                    continue;
                }
                if let Pattern::Exact(name) = &pattern {
                    exact.push(name.clone());
                }
                normalised.push(entry.clone());
            }
            Err(why) => invalid.push(format!("event_types[{i}]"), why),
        }
    }
    (normalised, exact)
}

/// Shows a custom header value without revealing it.
pub fn mask_header_value(value: &str) -> String {
    if value.is_empty() { String::new() } else { "********".to_owned() }
}

/// What a batch of finished attempts does to an endpoint's health columns (DESIGN §5.2):
/// `last_success_at` on any 2xx, `last_error` of the last failure, and `failing_since`, set by
/// the first failure after creation, enabling or a success and cleared by a 2xx.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HealthChange<'a> {
    /// Some attempt succeeded.
    pub any_success: bool,
    /// The last attempt in the batch succeeded.
    last_succeeded: bool,
    /// The last failure's error, when some attempt failed.
    pub last_failure: Option<Option<&'a str>>,
}

/// What happens to `failing_since`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailingSince {
    /// The batch ended with a success: not failing.
    Clear,
    /// A success, then a failure: failing from now.
    Restart,
    /// Only failures: failing since when it was, or from now if it was not.
    KeepOrStart,
}

impl FailingSince {
    /// The name the store's update statement switches on.
    pub fn as_str(self) -> &'static str {
        match self {
            FailingSince::Clear => "clear",
            FailingSince::Restart => "now",
            FailingSince::KeepOrStart => "keep",
        }
    }
}

impl<'a> HealthChange<'a> {
    /// Adds one attempt, in the order they finished.
    pub fn add(&mut self, success: bool, error: Option<&'a str>) {
        self.last_succeeded = success;
        if success {
            self.any_success = true;
        } else {
            self.last_failure = Some(error);
        }
    }

    /// What happens to `failing_since`.
    pub fn failing_since(&self) -> FailingSince {
        match (self.last_succeeded, self.any_success) {
            (true, _) => FailingSince::Clear,
            (false, true) => FailingSince::Restart,
            (false, false) => FailingSince::KeepOrStart,
        }
    }
}

/// The health job's rule: an endpoint failing since at or before `failing_before`
/// (`now − disable_after`) whose last failed attempt was at or after `failed_since` (the last
/// 24 h) is disabled.
pub fn is_dead(
    failing_since: Option<i64>,
    last_failure_at: Option<i64>,
    failing_before: i64,
    failed_since: i64,
) -> bool {
    failing_since.is_some_and(|since| since <= failing_before)
        && last_failure_at.is_some_and(|at| at >= failed_since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_since_follows_the_last_attempt_of_a_batch() {
        let mut all_failed = HealthChange::default();
        all_failed.add(false, Some("HTTP 500"));
        all_failed.add(false, Some("timeout"));
        assert_eq!(all_failed.failing_since(), FailingSince::KeepOrStart);
        assert_eq!(all_failed.last_failure, Some(Some("timeout")));
        assert!(!all_failed.any_success);
        let mut recovered = all_failed.clone();
        recovered.add(true, None);
        assert_eq!(recovered.failing_since(), FailingSince::Clear);
        let mut relapsed = recovered.clone();
        relapsed.add(false, None);
        assert_eq!(relapsed.failing_since(), FailingSince::Restart);
        assert_eq!(relapsed.last_failure, Some(None));
    }

    #[test]
    fn an_endpoint_is_dead_when_failing_long_enough_and_still_failing() {
        assert!(is_dead(Some(10), Some(95), 10, 90));
        assert!(!is_dead(Some(11), Some(95), 10, 90), "not failing for long enough");
        assert!(!is_dead(Some(10), Some(89), 10, 90), "no failure in the last day");
        assert!(!is_dead(None, Some(95), 10, 90), "not failing");
        assert!(!is_dead(Some(10), None, 10, 90));
    }

    #[test]
    fn generated_secrets_are_valid_and_unique() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(validate_secret(&a).is_ok());
        assert!(validate_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(validate_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(validate_secret("whsec_not base64!").is_err());
        assert!(validate_secret("whsec_c2hvcnQ=").is_err());
    }

    #[test]
    fn urls_must_be_https_absolute_and_credential_free() {
        assert!(validate_url("https://example.com/hooks", false, &[]).is_ok());
        assert!(validate_url("http://example.com/hooks", false, &[]).is_err());
        assert!(validate_url("http://127.0.0.1:9000/hooks", true, &[]).is_ok());
        assert!(validate_url("https://127.0.0.1/hooks", false, &[]).is_err());
        assert!(validate_url("https://[::ffff:10.0.0.1]/hooks", false, &[]).is_err());
        assert!(validate_url("https://169.254.169.254/latest", false, &[]).is_err());
        assert!(validate_url("https://LOCALHOST./x", false, &[]).is_err());
        assert!(validate_url("https://8.8.8.8/hooks", false, &[]).is_ok());
        let allow = ["10.0.0.0/8".parse().expect("cidr")];
        assert!(validate_url("https://10.1.2.3/hooks", false, &allow).is_ok());
        assert!(validate_url("https://192.168.1.1/hooks", false, &allow).is_err());
        let Err(dev_ftp) = validate_url("ftp://example.com", true, &[]) else { panic!("ftp:// accepted") };
        assert!(dev_ftp.contains("https:// or http://"), "dev mode names both schemes it takes: {dev_ftp}");
        assert!(validate_url("https://user:pw@example.com", false, &[]).is_err());
        assert!(validate_url("https://example.com/#frag", false, &[]).is_err());
        assert!(validate_url("/relative", false, &[]).is_err());
        assert!(validate_url(&format!("https://example.com/{}", "a".repeat(3000)), false, &[]).is_err());
    }

    #[test]
    fn reserved_and_malformed_headers_are_refused() {
        let mut invalid = Invalid::default();
        let mut headers = BTreeMap::new();
        headers.insert("X-Api-Key".to_owned(), "abc".to_owned());
        validate_headers(&mut invalid, &headers, 20);
        assert!(invalid.0.is_empty());
        for (name, value) in [
            ("webhook-signature", "x"),
            ("Content-Type", "text/plain"),
            ("Host", "evil"),
            ("bad header", "x"),
            ("X-Ok", "line\r\nInjected: yes"),
        ] {
            let mut invalid = Invalid::default();
            let headers = BTreeMap::from([(name.to_owned(), value.to_owned())]);
            validate_headers(&mut invalid, &headers, 20);
            assert_eq!(invalid.0.len(), 1, "{name}: {value:?}");
        }
    }

    #[test]
    fn event_type_entries_are_parsed_and_deduplicated() {
        let mut invalid = Invalid::default();
        let entries = vec!["a.b".into(), "a.*".into(), "a.b".into(), "*".into()];
        let (normalised, exact) = parse_event_types(&mut invalid, &entries);
        assert!(invalid.0.is_empty());
        assert_eq!(normalised, vec!["a.b", "a.*", "*"]);
        assert_eq!(exact, vec!["a.b"]);
        let (_, _) = parse_event_types(&mut invalid, &["Bad".into()]);
        assert_eq!(invalid.0[0].field, "event_types[0]");
    }
}
