//! Tenants (`/v1/tenants`) and their tokens (`/v1/tenants/{tenant}/tokens`, `/v1/tokens`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorResponses, OrNotFound};
use super::extract::{Admin, ApiJson, ApiQuery, Auth, PageParams, Pager, RawBody, TenantPath, TenantScope};
use crate::domain::id::{IdKind, new_id};
use crate::domain::tenant::{MAX_METADATA_BYTES, Tenant, validate_external_id};
use crate::domain::time::{format_micros, now_micros};
use crate::domain::token::{Token, generate_token, hash_token, shown_prefix};
use crate::domain::{Invalid, check_text};
use crate::storage::StoreError;

/// Body of `POST /v1/tenants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantIn {
    /// Display name, 1–255 characters.
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    /// The platform's own id: `[A-Za-z0-9_-]{1,64}`, unique, usable in paths instead of `id`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    pub external_id: Option<String>,
    /// Free-form JSON object (at most 16 KiB).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// Body of `PATCH /v1/tenants/{tenant}`; absent fields are left as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    /// New name.
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    /// New external id; `null` removes it.
    #[serde(default, deserialize_with = "super::double_option")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    pub external_id: Option<Option<String>>,
    /// Replaces the metadata object.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// A tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantOut {
    /// `tnt_…`
    pub id: String,
    /// The platform's id, if set.
    pub external_id: Option<String>,
    /// Display name.
    pub name: String,
    /// Free-form JSON object.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<Tenant> for TenantOut {
    fn from(t: Tenant) -> Self {
        TenantOut {
            id: t.id,
            external_id: t.external_id,
            name: t.name,
            metadata: t.metadata,
            created_at: format_micros(t.created_at),
            updated_at: format_micros(t.updated_at),
        }
    }
}

/// A page of tenants.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    /// Newest first.
    pub data: Vec<TenantOut>,
    /// Cursor of the next page, `null` on the last.
    pub next_cursor: Option<String>,
}

fn check_name(invalid: &mut Invalid, name: &str) {
    if name.trim().is_empty() {
        invalid.push("name", "must not be empty");
    }
    check_text(invalid, "name", name, 255);
}

fn check_metadata(invalid: &mut Invalid, metadata: &Map<String, Value>) {
    if serde_json::to_string(metadata).map_or(0, |s| s.len()) > MAX_METADATA_BYTES {
        invalid.push("metadata", format!("must be at most {MAX_METADATA_BYTES} bytes of JSON"));
    }
}

fn external_id_conflict(result: Result<(), StoreError>, external_id: Option<&str>) -> Result<(), ApiError> {
    match result {
        Err(StoreError::Conflict(_)) => Err(ApiError::Conflict(format!(
            "a tenant with external_id `{}` already exists",
            external_id.unwrap_or_default()
        ))),
        other => other.map_err(ApiError::from),
    }
}

/// Create a tenant.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = TenantIn, params(super::idempotency::IdempotencyKeyHeader),
    responses((status = 201, description = "Created", body = TenantOut), ErrorResponses))]
pub async fn create_tenant(
    Admin(state): Admin,
    ApiJson(body): ApiJson<TenantIn>,
) -> Result<(StatusCode, Json<TenantOut>), ApiError> {
    let mut invalid = Invalid::default();
    check_name(&mut invalid, &body.name);
    if let Some(external_id) = &body.external_id
        && let Err(why) = validate_external_id(external_id)
    {
        invalid.push("external_id", why);
    }
    let metadata = body.metadata.unwrap_or_default();
    check_metadata(&mut invalid, &metadata);
    invalid.into_result().map_err(ApiError::Invalid)?;
    let now = now_micros();
    let tenant = Tenant {
        id: new_id(IdKind::Tenant),
        external_id: body.external_id,
        name: body.name,
        metadata,
        created_at: now,
        updated_at: now,
    };
    external_id_conflict(state.store.insert_tenant(&tenant).await, tenant.external_id.as_deref())?;
    Ok((StatusCode::CREATED, Json(tenant.into())))
}

/// List tenants, newest first.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", params(PageParams),
    responses((status = 200, description = "A page of tenants, newest first", body = TenantList), ErrorResponses))]
pub async fn list_tenants(
    Admin(state): Admin,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<TenantList>, ApiError> {
    let pager = Pager::new(&page, "tenants")?;
    let rows = state.store.list_tenants(&pager.query()).await?;
    let (rows, next_cursor) = pager.finish(rows, |t| &t.id);
    Ok(Json(TenantList { data: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

/// Get a tenant by id or external id (a tenant token may read its own).
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(TenantPath),
    responses((status = 200, description = "The tenant", body = TenantOut), ErrorResponses))]
pub async fn get_tenant(TenantScope { tenant, .. }: TenantScope) -> Result<Json<TenantOut>, ApiError> {
    Ok(Json(tenant.into()))
}

/// Update a tenant's name, external id or metadata.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}", tag = "tenants", request_body = TenantPatch,
    params(TenantPath),
    responses((status = 200, description = "The tenant", body = TenantOut), ErrorResponses))]
pub async fn update_tenant(
    TenantScope { state, auth, tenant }: TenantScope,
    ApiJson(patch): ApiJson<TenantPatch>,
) -> Result<Json<TenantOut>, ApiError> {
    auth.require_admin()?;
    let mut tenant = tenant;
    let mut invalid = Invalid::default();
    if let Some(name) = patch.name {
        check_name(&mut invalid, &name);
        tenant.name = name;
    }
    if let Some(external_id) = patch.external_id {
        if let Some(id) = &external_id
            && let Err(why) = validate_external_id(id)
        {
            invalid.push("external_id", why);
        }
        tenant.external_id = external_id;
    }
    if let Some(metadata) = patch.metadata {
        check_metadata(&mut invalid, &metadata);
        tenant.metadata = metadata;
    }
    invalid.into_result().map_err(ApiError::Invalid)?;
    tenant.updated_at = now_micros();
    let updated = state.store.update_tenant(&tenant).await;
    state.lookups.forget_tenants();
    external_id_conflict(updated, tenant.external_id.as_deref())?;
    Ok(Json(tenant.into()))
}

/// Delete a tenant: its endpoints are deleted (pending deliveries fail with `endpoint_deleted`)
/// and its tokens revoked; history stays until retention removes it.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(TenantPath),
    responses((status = 204, description = "deleted"), ErrorResponses))]
pub async fn delete_tenant(TenantScope { state, auth, tenant }: TenantScope) -> Result<StatusCode, ApiError> {
    auth.require_admin()?;
    let deleted = state.store.delete_tenant(&tenant.id, now_micros()).await;
    state.lookups.forget_tenants();
    deleted?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /v1/tenants/{tenant}/tokens`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenIn {
    /// A label, such as `acme-portal`.
    #[serde(default)]
    #[schema(max_length = 255)]
    pub name: String,
    /// How long the token works, as a duration such as `"30m"`, `"12h"` or `"90d"` (at most 10
    /// years); absent = until revoked.
    #[schema(example = "30d")]
    pub expires_in: Option<String>,
}

/// Longest `expires_in` of a token.
const TOKEN_LIFETIME_MAX: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 86_400);
/// Longest `expires_in` of a portal link.
const PORTAL_LINK_MAX: std::time::Duration = std::time::Duration::from_secs(86_400);
/// `expires_in` of a portal link when absent.
const PORTAL_LINK_DEFAULT: std::time::Duration = std::time::Duration::from_secs(3_600);

/// Parses an `expires_in` duration into the expiry time (Unix µs) from `now`, within `max`.
fn expiry(
    invalid: &mut Invalid,
    text: Option<&str>,
    default: Option<std::time::Duration>,
    max: std::time::Duration,
    now: i64,
) -> Option<i64> {
    let lifetime = match text {
        None => default?,
        Some(text) => match crate::config::parse_duration(text) {
            Ok(lifetime) if lifetime >= std::time::Duration::from_secs(1) && lifetime <= max => lifetime,
            Ok(_) => {
                let most = humantime::format_duration(max);
                invalid.push("expires_in", format!("must be between 1s and {most}"));
                return None;
            }
            Err(why) => {
                invalid.push("expires_in", why);
                return None;
            }
        },
    };
    Some(now + lifetime.as_micros() as i64)
}

/// A new token: the only time `token` is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCreatedOut {
    #[serde(flatten)]
    /// The stored token.
    pub token_info: Token,
    /// The bearer token, `hrld_…`; store it now, it is not shown again.
    pub token: String,
}

/// A page of tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    /// Newest first.
    pub data: Vec<Token>,
    /// Cursor of the next page, `null` on the last.
    pub next_cursor: Option<String>,
}

/// Creates and stores a token; returns it with its clear text.
pub async fn issue_token(
    store: &crate::storage::Store,
    name: String,
    tenant_id: Option<String>,
    expires_at: Option<i64>,
) -> Result<(Token, String), StoreError> {
    let secret = generate_token();
    let token = Token {
        id: new_id(IdKind::Token),
        name,
        tenant_id,
        prefix: shown_prefix(&secret),
        created_at: now_micros(),
        last_used_at: None,
        expires_at,
    };
    store.insert_token(&token, &hash_token(&secret)).await?;
    Ok((token, secret))
}

/// Create a token confined to one tenant.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/tokens", tag = "tokens", request_body = TokenIn,
    params(TenantPath, super::idempotency::IdempotencyKeyHeader),
    responses((status = 201, description = "Created; `token` is shown only in this answer", body = TokenCreatedOut), ErrorResponses))]
pub async fn create_tenant_token(
    TenantScope { state, auth, tenant }: TenantScope,
    ApiJson(body): ApiJson<TokenIn>,
) -> Result<(StatusCode, Json<TokenCreatedOut>), ApiError> {
    auth.require_admin()?;
    let mut invalid = Invalid::default();
    check_text(&mut invalid, "name", &body.name, 255);
    let expires_at = expiry(&mut invalid, body.expires_in.as_deref(), None, TOKEN_LIFETIME_MAX, now_micros());
    invalid.into_result().map_err(ApiError::Invalid)?;
    let (token, secret) = issue_token(state.store.as_ref(), body.name, Some(tenant.id), expires_at).await?;
    Ok((StatusCode::CREATED, Json(TokenCreatedOut { token_info: token, token: secret })))
}

/// Body of `POST …/portal-links`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortalLinkIn {
    /// How long the link works, such as `"30m"` (default `"1h"`, at most `"24h"`).
    #[schema(example = "1h")]
    pub expires_in: Option<String>,
}

/// A link that opens the tenant's portal signed in.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortalLinkOut {
    /// `…/dashboard#token=…`: the token rides in the URL fragment, which browsers never send to a
    /// server; the page keeps it for its tab only. Hand it to the customer's browser, not a log.
    pub url: String,
    /// RFC 3339: the link, and any tab it signed in, stop working then.
    pub expires_at: String,
}

/// Create a portal link: a URL that opens `/dashboard` signed in as this tenant until it
/// expires, so a platform can open (or embed) its customer's portal without handing out a
/// permanent token. Each link is a tenant token named `portal link` with `expires_at` set; revoke
/// it like any token.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/portal-links", tag = "tokens",
    request_body(content = Option<PortalLinkIn>, description = "Optional: an empty body means one hour"),
    params(TenantPath, super::idempotency::IdempotencyKeyHeader),
    responses((status = 201, description = "Created; the link is shown only in this answer", body = PortalLinkOut), ErrorResponses))]
pub async fn create_portal_link(
    TenantScope { state, auth, tenant }: TenantScope,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<PortalLinkOut>), ApiError> {
    auth.require_admin()?;
    let input: PortalLinkIn = super::endpoints::optional_body(&body)?;
    let mut invalid = Invalid::default();
    let now = now_micros();
    let expires_at =
        expiry(&mut invalid, input.expires_in.as_deref(), Some(PORTAL_LINK_DEFAULT), PORTAL_LINK_MAX, now)
            .unwrap_or(now);
    invalid.into_result().map_err(ApiError::Invalid)?;
    let base = public_url(&state, &headers)?;
    let (_, secret) =
        issue_token(state.store.as_ref(), "portal link".to_owned(), Some(tenant.id), Some(expires_at))
            .await?;
    Ok((
        StatusCode::CREATED,
        Json(PortalLinkOut {
            url: format!("{base}/dashboard#token={secret}"),
            expires_at: format_micros(expires_at),
        }),
    ))
}

/// Where users reach Herald: `[api] public_url`, else `http://` and the request's `Host`.
fn public_url(state: &AppState, headers: &axum::http::HeaderMap) -> Result<String, ApiError> {
    if let Some(url) = &state.config.api.public_url {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)))
        .ok_or_else(|| {
            ApiError::BadRequest("no usable `Host` header; set `[api] public_url` to build links".into())
        })?;
    Ok(format!("http://{host}"))
}

/// Filters of `GET /v1/tokens`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenFilter {
    /// Only this tenant's tokens (id or external_id).
    pub tenant: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    page: PageParams,
}

/// List live tokens, newest first.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(TokenFilter, PageParams),
    responses((status = 200, description = "A page of tokens, newest first", body = TokenList), ErrorResponses))]
pub async fn list_tokens(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(filter): ApiQuery<TokenFilter>,
) -> Result<Json<TokenList>, ApiError> {
    auth.require_admin()?;
    let tenant_id = match &filter.tenant {
        Some(key) => Some(auth.tenant(&state, key).await?.id),
        None => None,
    };
    let pager = Pager::new(&filter.page, &format!("tokens|{}", tenant_id.as_deref().unwrap_or("")))?;
    let rows = state.store.list_tokens(tenant_id.as_deref(), now_micros(), &pager.query()).await?;
    let (rows, next_cursor) = pager.finish(rows, |t| &t.id);
    Ok(Json(TokenList { data: rows, next_cursor }))
}

/// Revoke a token; it stops working at once.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "`tok_…`")),
    responses((status = 204, description = "revoked"), ErrorResponses))]
pub async fn revoke_token(Admin(state): Admin, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    state.store.revoke_token(&id, now_micros()).await.or_not_found("token", &id)?;
    Ok(StatusCode::NO_CONTENT)
}
