//! `ApiError`: every way a request can fail, rendered as RFC 9457 problem+json. 5xx bodies are
//! generic; their cause is logged once, here.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{FieldError, Invalid};
use crate::storage::StoreError;

/// `Retry-After` seconds on a 503: a restarting database is usually back within a few seconds.
pub const UNAVAILABLE_RETRY_AFTER: u64 = 2;

/// An API failure; one exhaustive `match` maps it to a status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request could not be read (malformed JSON, bad query string).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or not a valid one.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 403: the token is valid but may not use this route.
    #[error("{0}")]
    Forbidden(String),
    /// 404: unknown, or not the caller's.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("this method is not allowed on this route")]
    MethodNotAllowed,
    /// 409: conflicts with stored state.
    #[error("{0}")]
    Conflict(String),
    /// 413: body too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid, field by field.
    #[error("{0}")]
    Invalid(Invalid),
    /// 429: this token sent too many requests; retry after this many seconds.
    #[error("too many requests from this token; retry after {0} s")]
    TooManyRequests(u64),
    /// 431: the request's headers are too large.
    #[error("the request headers are too large")]
    HeadersTooLarge,
    /// 503: the store is unavailable.
    #[error("service unavailable")]
    Unavailable,
    /// 500: our fault; never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// `404` naming what was not found, for a store lookup.
pub trait OrNotFound<T> {
    /// `StoreError::NotFound` becomes `404 {what} `{key}` not found`; other errors as usual.
    fn or_not_found(self, what: &str, key: &str) -> Result<T, ApiError>;
}

impl<T> OrNotFound<T> for Result<T, StoreError> {
    fn or_not_found(self, what: &str, key: &str) -> Result<T, ApiError> {
        match self {
            Err(StoreError::NotFound) => Err(ApiError::not_found(what, key)),
            other => other.map_err(ApiError::from),
        }
    }
}

/// The error answers every API route can give, as the OpenAPI document lists them (one
/// definition for every route).
#[derive(utoipa::IntoResponses)]
pub enum ErrorResponses {
    /// A client error.
    #[response(
        status = "4XX",
        content_type = "application/problem+json",
        description = "Client error: 400 malformed, 401 no or bad token, 403 not allowed for this token, 404 unknown or not yours, 409 conflict, 413 too large, 415 not JSON, 422 invalid (with `errors`), 429 throttled (with `Retry-After`), 431 headers too large"
    )]
    Client(Problem),
    /// A server error.
    #[response(
        status = "5XX",
        content_type = "application/problem+json",
        description = "Server error: 500 internal, 503 store unavailable; the detail never carries internal text"
    )]
    Server(Problem),
}

/// The problem+json body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the problem type (`about:blank`: the status says it all).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the status.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong for this request.
    pub detail: String,
    /// Field-by-field validation problems (422 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldErrorOut>>,
}

/// One invalid field.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldErrorOut {
    /// The field (`url`, `headers.X-Key`, `event_types[1]`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl From<FieldError> for FieldErrorOut {
    fn from(e: FieldError) -> Self {
        FieldErrorOut { field: e.field, message: e.message }
    }
}

impl ApiError {
    /// A 422 for one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid(Invalid::one(field, message))
    }

    /// A 404 naming what was not found.
    pub fn not_found(what: &str, key: &str) -> ApiError {
        ApiError::NotFound(format!("{what} `{key}` not found"))
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::Conflict(what) => {
                ApiError::Conflict(format!("conflicts with an existing object ({what})"))
            }
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "request failed: store unavailable");
                ApiError::Unavailable
            }
            StoreError::InvalidText => {
                ApiError::invalid("body", "text values must not contain NUL characters")
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed");
                "an internal error occurred; it has been logged".to_owned()
            }
            ApiError::Unavailable => "the service is temporarily unavailable; retry shortly".to_owned(),
            ApiError::Invalid(invalid) => format!("the request is invalid: {invalid}"),
            other => other.to_string(),
        };
        let retry_after = match &self {
            ApiError::TooManyRequests(seconds) => Some(*seconds),
            ApiError::Unavailable => Some(UNAVAILABLE_RETRY_AFTER),
            _ => None,
        };
        let errors = match self {
            ApiError::Invalid(invalid) => Some(invalid.0.into_iter().map(FieldErrorOut::from).collect()),
            _ => None,
        };
        let problem = Problem {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        };
        let mut response = (status, Json(problem)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_store_answers_503_with_retry_after() {
        let error = ApiError::from(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], UNAVAILABLE_RETRY_AFTER.to_string());
    }
}
