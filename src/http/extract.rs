//! Extractors that answer in our error shape: `ApiJson`, `ApiQuery`, the bearer-token `Auth`, and
//! list pagination with opaque cursors bound to their filters.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, RawPathParams, Request};
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::IntoParams;

use super::AppState;
use super::error::{ApiError, OrNotFound};
use crate::domain::tenant::Tenant;
use crate::domain::time::{now_micros, parse_rfc3339};
use crate::domain::token::{Scope, hash_token, shown_prefix};
use crate::storage::PageQuery;

/// A JSON object body whose rejections are problem+json: 415 not JSON, 413 too large, 400
/// malformed (checked over the whole body first), 422 not an object or the wrong shape (naming the
/// field).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "expected a body with `content-type: application/json`".into(),
            ));
        }
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json_object(&bytes).map(ApiJson)
    }
}

/// A raw body whose rejections are problem+json (413 over the limit), for routes whose body is
/// optional.
pub struct RawBody(pub Bytes);

/// The body limit of a route (see [`body_limit`]), so a 413 can name it.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// A route's body limit: enforced, and named by the 413 it causes.
pub fn body_limit(bytes: usize) -> (axum::extract::DefaultBodyLimit, axum::Extension<BodyLimit>) {
    (axum::extract::DefaultBodyLimit::max(bytes), axum::Extension(BodyLimit(bytes)))
}

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req.extensions().get::<BodyLimit>().copied();
        Bytes::from_request(req, state).await.map(RawBody).map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(match limit {
                    Some(BodyLimit(bytes)) => {
                        format!("the request body is over this route's limit of {bytes} bytes")
                    }
                    None => "the request body is larger than this route accepts".into(),
                })
            } else {
                ApiError::BadRequest(format!("the body could not be read: {}", rejection.body_text()))
            }
        })
    }
}

/// Parses a JSON object body into `T`, with the error statuses of `ApiJson`.
pub fn parse_json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(ApiError::BadRequest(format!("the body is not valid JSON: {error}")));
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." || path.is_empty() { "body".to_owned() } else { path };
        let message = error.into_inner().to_string();
        let message = match message.find(" at line ") {
            Some(at) => message[..at].to_owned(),
            None => message,
        };
        // serde reports an unknown field at the object holding it; name the field itself.
        let field = match message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()) {
            Some(unknown) if field == "body" => unknown.to_owned(),
            // Newer serde_path_to_error already ends the path with the unknown field.
            Some(unknown) if field == unknown || field.ends_with(&format!(".{unknown}")) => field,
            Some(unknown) => format!("{field}.{unknown}"),
            None => field,
        };
        ApiError::invalid(&field, message)
    })
}

/// Splits serde's `path: message` into a field name and a message.
fn split_path(text: &str) -> (String, String) {
    match text.split_once(": ") {
        Some((path, message)) if !path.contains(' ') && path != "." => (path.to_owned(), message.to_owned()),
        _ => ("query".to_owned(), text.to_owned()),
    }
}

/// A query string whose rejections are problem+json (422 naming the parameter).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        match Query::<T>::try_from_uri(&parts.uri) {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                let text = e.body_text();
                let message = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
                let (field, message) = split_path(message);
                Err(ApiError::invalid(&field, message))
            }
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
}

/// Per-token request rate limits (GCRA, burst = one second's worth).
pub struct RateLimits {
    tenant: Option<governor::DefaultKeyedRateLimiter<String>>,
    admin: Option<governor::DefaultKeyedRateLimiter<String>>,
}

impl RateLimits {
    /// Limits from `[security] tenant_rate_limit` and `admin_rate_limit` (0 = none).
    pub fn new(config: &crate::config::SecurityConfig) -> RateLimits {
        let limiter = |per_second: u32| {
            std::num::NonZeroU32::new(per_second)
                .map(|n| governor::RateLimiter::keyed(governor::Quota::per_second(n)))
        };
        RateLimits { tenant: limiter(config.tenant_rate_limit), admin: limiter(config.admin_rate_limit) }
    }

    /// Counts one request of token `key`; 429 with `Retry-After` when over the limit.
    fn check(&self, scope: &Scope, key: &str) -> Result<(), ApiError> {
        use governor::clock::{Clock, DefaultClock};
        let limiter = match scope {
            Scope::Admin => &self.admin,
            Scope::Tenant(_) => &self.tenant,
        };
        let Some(limiter) = limiter else { return Ok(()) };
        limiter.check_key(&key.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::TooManyRequests(wait.as_secs_f64().ceil().max(1.0) as u64)
        })
    }
}

/// The caller, from `Authorization: Bearer <token>`.
#[derive(Clone, Debug)]
pub struct Auth {
    /// What the token may see.
    pub scope: Scope,
}

impl Auth {
    /// Refuses tenant tokens on admin-only routes.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.scope {
            Scope::Admin => Ok(()),
            Scope::Tenant(_) => Err(ApiError::Forbidden("this route needs an admin token".into())),
        }
    }

    /// Resolves `{tenant}` (id or external id) to a live tenant this caller may see; another
    /// tenant's key answers 404 exactly like an unknown one.
    pub async fn tenant(&self, state: &AppState, key: &str) -> Result<Tenant, ApiError> {
        let tenant = state.lookups.tenant(&state.store, key).await.or_not_found("tenant", key)?;
        match &self.scope {
            Scope::Tenant(own) if *own != tenant.id => Err(ApiError::not_found("tenant", key)),
            _ => Ok(tenant),
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 512);
        let Some(presented) = presented else {
            metrics::counter!(crate::metrics::AUTH_FAILURES).increment(1);
            tracing::info!(route = parts.uri.path(), "authentication failed: no bearer token");
            return Err(ApiError::Unauthorized);
        };
        let hash = hash_token(presented);
        if let Some(admin) = &state.admin_hash
            && bool::from(admin.as_bytes().ct_eq(hash.as_bytes()))
        {
            state.limits.check(&Scope::Admin, "configured-admin-token")?;
            return Ok(Auth { scope: Scope::Admin });
        }
        let now = now_micros();
        match state.store.find_token_by_hash(&hash, now).await? {
            Some(token) => {
                if token.last_used_at.is_none_or(|at| now - at > 60_000_000) {
                    let store = state.store.clone();
                    let id = token.id.clone();
                    tokio::spawn(async move {
                        if let Err(error) = store.touch_token(&id, now).await {
                            tracing::debug!(%error, "could not record token use");
                        }
                    });
                }
                let scope = token.scope();
                state.limits.check(&scope, &token.id)?;
                Ok(Auth { scope })
            }
            None => {
                let route = parts.uri.path().to_owned();
                tracing::info!(route, token.prefix = shown_prefix(presented), "authentication failed");
                metrics::counter!(crate::metrics::AUTH_FAILURES).increment(1);
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// An admin caller, with the state: 403 for tenant tokens, before anything else of the request is
/// read.
pub struct Admin(pub AppState);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Auth::from_request_parts(parts, state).await?.require_admin()?;
        Ok(Admin(state.clone()))
    }
}

/// Any valid token, admin or tenant, with the state: for the routes every caller may read.
pub struct AnyCaller(pub AppState);

impl FromRequestParts<AppState> for AnyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Auth::from_request_parts(parts, state).await?;
        Ok(AnyCaller(state.clone()))
    }
}

/// A route under `/v1/tenants/{tenant}`: the state, the caller, and `{tenant}` resolved for that
/// caller (see [`Auth::tenant`]), before the body is read.
pub struct TenantScope {
    /// What every handler may use.
    pub state: AppState,
    /// The caller.
    pub auth: Auth,
    /// The live tenant the path names.
    pub tenant: Tenant,
}

impl FromRequestParts<AppState> for TenantScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let auth = Auth::from_request_parts(parts, state).await?;
        let key = path_param(parts, state, &["tenant"]).await?;
        let tenant = auth.tenant(state, &key).await?;
        Ok(TenantScope { state: state.clone(), auth, tenant })
    }
}

/// A route under `/v1/tenants/{tenant}` that names one item last: the state, the live tenant
/// (resolved as for [`TenantScope`]), and the item's id as the path gives it — `{ep}` (an
/// endpoint) or `{id}` (an event, a delivery), which the handler looks up within that tenant.
pub struct ItemScope(pub AppState, pub Tenant, pub String);

impl FromRequestParts<AppState> for ItemScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let TenantScope { state, tenant, .. } = TenantScope::from_request_parts(parts, state).await?;
        let id = path_param(parts, &state, &["ep", "id"]).await?;
        Ok(ItemScope(state, tenant, id))
    }
}

/// The first of `names` among the route's path parameters (404 when the route has none of them).
async fn path_param(parts: &mut Parts, state: &AppState, names: &[&str]) -> Result<String, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    params
        .iter()
        .find(|(name, _)| names.contains(name))
        .map(|(_, value)| value.to_owned())
        .ok_or_else(|| ApiError::NotFound("no such route".into()))
}

/// `{tenant}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// `tnt_…` id or external_id.
    pub tenant: String,
}

/// `{tenant}/endpoints/{ep}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EndpointPath {
    /// `tnt_…` id or external_id.
    pub tenant: String,
    /// `ep_…`.
    pub ep: String,
}

/// `{tenant}/events/{id}` and `{tenant}/deliveries/{id}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ItemPath {
    /// `tnt_…` id or external_id.
    pub tenant: String,
    /// `evt_…` or `dlv_…`.
    pub id: String,
}

/// Largest page.
pub const MAX_LIMIT: i64 = 250;
/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: i64 = 50;

/// `?limit=&cursor=` on every list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1–250 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 250)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `?since=&until=` on the lists of events and deliveries: a window on creation time.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimeRange {
    /// Created at or after (RFC 3339 with offset).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Created before (RFC 3339 with offset).
    #[param(format = DateTime)]
    pub until: Option<String>,
}

impl TimeRange {
    /// Both bounds in Unix microseconds, each `None` when absent; 422 naming a malformed one.
    pub fn parse(&self) -> Result<crate::storage::Created, ApiError> {
        let since = parse_time("since", self.since.as_deref())?;
        Ok(crate::storage::Created { since, until: parse_time("until", self.until.as_deref())? })
    }
}

/// Parses an optional RFC 3339 query parameter.
fn parse_time(field: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value.map(|v| parse_rfc3339(v).map_err(|why| ApiError::invalid(field, why))).transpose()
}

/// A validated page request, bound to the filters it was made with.
pub struct Pager {
    limit: i64,
    after: Option<String>,
    fingerprint: String,
}

impl Pager {
    /// Checks `limit` and `cursor`; `filters` names the list and its filter values, so a cursor
    /// cannot be replayed against another list or other filters.
    pub fn new(params: &PageParams, filters: &str) -> Result<Pager, ApiError> {
        let limit = match &params.limit {
            None => DEFAULT_LIMIT,
            Some(text) => text.trim().parse::<i64>().map_err(|_| {
                ApiError::invalid("limit", format!("must be a whole number between 1 and {MAX_LIMIT}"))
            })?,
        };
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::invalid("limit", format!("must be between 1 and {MAX_LIMIT}")));
        }
        let fingerprint = hex::encode(&Sha256::digest(filters.as_bytes())[..6]);
        let after = match &params.cursor {
            None => None,
            Some(cursor) => Some(decode_cursor(cursor, &fingerprint).ok_or_else(|| {
                ApiError::invalid("cursor", "is not a cursor returned by this list with these filters")
            })?),
        };
        Ok(Pager { limit, after, fingerprint })
    }

    /// The store query: one row more than the page, to learn whether another page exists.
    pub fn query(&self) -> PageQuery {
        PageQuery { after: self.after.clone(), limit: self.limit + 1 }
    }

    /// Cuts the extra row and builds `next_cursor` from the last item's sort key.
    pub fn finish<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> &str) -> (Vec<T>, Option<String>) {
        let more = rows.len() as i64 > self.limit;
        rows.truncate(self.limit as usize);
        let next = if more {
            rows.last().map(|last| URL_SAFE_NO_PAD.encode(format!("{}|{}", self.fingerprint, key(last))))
        } else {
            None
        };
        (rows, next)
    }
}

fn decode_cursor(cursor: &str, fingerprint: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (fp, key) = text.split_once('|')?;
    (fp == fingerprint && !key.is_empty()).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_are_bound_to_filters() {
        let params = PageParams { limit: Some("2".into()), cursor: None };
        let pager = Pager::new(&params, "tenants").expect("valid");
        let (rows, next) = pager.finish(vec!["c", "b", "a"], |s| s);
        assert_eq!(rows, vec!["c", "b"]);
        let next = next.expect("a next page");
        let again =
            Pager::new(&PageParams { limit: Some("2".into()), cursor: Some(next.clone()) }, "tenants")
                .expect("valid");
        assert_eq!(again.query().after.as_deref(), Some("b"));
        assert!(Pager::new(&PageParams { limit: Some("2".into()), cursor: Some(next) }, "tokens").is_err());
        assert!(Pager::new(&PageParams { limit: Some("0".into()), cursor: None }, "x").is_err());
        assert!(Pager::new(&PageParams { limit: Some("251".into()), cursor: None }, "x").is_err());
        assert!(Pager::new(&PageParams { limit: None, cursor: Some("garbage!".into()) }, "x").is_err());
    }
}
