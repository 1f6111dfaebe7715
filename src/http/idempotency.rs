//! `Idempotency-Key` on creating POSTs (event ingest has its own, per tenant): the first request
//! with a key runs and its 2xx answer is stored; a repeat with the same body gets that answer
//! again with `Idempotent-Replayed: true`; a different body, or a repeat while the first is still
//! running, gets 409. Keys are scoped to the caller's token and the path, and live for
//! `[ingest] idempotency_window`.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::domain::event::validate_idempotency_key;
use crate::domain::time::now_micros;
use crate::storage::IdempotencyState;

/// The `Idempotency-Key` request header, as documented on every POST it applies to.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// 1–255 printable ASCII characters. A repeat of the same request with the same key within
    /// the idempotency window gets the first answer again (`Idempotent-Replayed: true`); another
    /// request with it, or a repeat while the first still runs, gets 409. On event ingest the
    /// body's `idempotency_key` wins over it.
    #[param(rename = "Idempotency-Key", value_type = String, required = false, min_length = 1, max_length = 255, pattern = "^[ -~]+$")]
    pub idempotency_key: Option<String>,
}

/// Largest stored answer; bigger ones are not replayable and are simply passed through.
const MAX_STORED_RESPONSE: usize = 256 * 1024;

/// The middleware.
pub async fn idempotency(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let key = match request.headers().get("idempotency-key") {
        Some(key) if request.method() == Method::POST && !is_ingest(&path) => key.clone(),
        _ => return next.run(request).await,
    };
    match run(&state, key, path, request, next).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn is_ingest(path: &str) -> bool {
    path.ends_with("/events") || path.ends_with("/events/batch")
}

async fn run(
    state: &AppState,
    key: HeaderValue,
    path: String,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key =
        key.to_str().map_err(|_| ApiError::invalid("Idempotency-Key", "must be printable ASCII"))?.to_owned();
    validate_idempotency_key(&key).map_err(|why| ApiError::invalid("Idempotency-Key", why))?;
    let caller = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| hex::encode(&Sha256::digest(v.as_bytes())[..12]))
        .unwrap_or_default();
    let scope = format!("req:{caller}:{path}");
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, state.config.api.body_limit).await.map_err(|_| {
        ApiError::PayloadTooLarge("the request body is larger than this route accepts".into())
    })?;
    let request_hash = hex::encode(Sha256::digest(&bytes));
    let since = now_micros() - state.config.ingest.idempotency_window.as_micros() as i64;
    match state.store.begin_idempotent(&scope, &key, &request_hash, since).await? {
        IdempotencyState::Started => {}
        IdempotencyState::Replay { status, body } => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() =
                axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK);
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        IdempotencyState::Mismatch => {
            return Err(ApiError::Conflict(
                "this idempotency key was already used with a different request".into(),
            ));
        }
        IdempotencyState::InProgress => {
            return Err(ApiError::Conflict(
                "a request with this idempotency key is still in progress".into(),
            ));
        }
    }
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    if !response.status().is_success() {
        state.store.abandon_idempotent(&scope, &key).await?;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    match to_bytes(body, MAX_STORED_RESPONSE).await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            state.store.finish_idempotent(&scope, &key, parts.status.as_u16(), &text).await?;
            Ok(Response::from_parts(parts, Body::from(bytes)))
        }
        Err(_) => {
            state.store.abandon_idempotent(&scope, &key).await?;
            Err(ApiError::Internal(anyhow::anyhow!("an idempotent answer was too large to store")))
        }
    }
}
