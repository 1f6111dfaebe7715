//! `/dashboard`: the on-call page and the customer portal, one self-contained HTML file served by
//! the binary (no external assets). It signs in with a token kept in `sessionStorage` and calls
//! the JSON API like any client.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};

use super::AppState;

const PAGE: &str = include_str!("dashboard.html");

/// `GET /`: a person who opens Herald's address in a browser lands on the dashboard.
pub(crate) async fn root() -> Redirect {
    Redirect::to("/dashboard")
}

/// The dashboard page.
#[utoipa::path(get, path = "/dashboard", tag = "ops",
    responses((status = 200, description = "HTML page", body = String, content_type = "text/html"), (status = "4XX", description = "Client error: 431 headers too large", body = super::error::Problem, content_type = "application/problem+json")))]
pub async fn dashboard(State(state): State<AppState>) -> impl IntoResponse {
    let ancestors = match state.config.api.frame_ancestors.as_slice() {
        [] => "'none'".to_owned(),
        origins => origins.join(" "),
    };
    let policy = format!(
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors {ancestors}"
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::CONTENT_SECURITY_POLICY, policy),
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
        ],
        PAGE,
    )
}
