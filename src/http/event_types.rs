//! The event type catalogue: `/v1/event-types`.

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorResponses, OrNotFound};
use super::extract::{Admin, AnyCaller, ApiJson, ApiQuery, PageParams, Pager};
use crate::domain::event_type::{EventType, validate_name, validate_schema};
use crate::domain::time::now_micros;
use crate::domain::{Invalid, check_text};
use crate::storage::StoreError;

/// Longest accepted description.
const MAX_DESCRIPTION: usize = 2000;

/// Body of `POST /v1/event-types`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTypeIn {
    /// `segment(.segment)+`, lowercase letters, digits and `_`.
    #[schema(example = "workflow.completed", pattern = r"^[a-z0-9_]+(\.[a-z0-9_]+)+$", max_length = 128)]
    pub name: String,
    /// Free text for the catalogue.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
    /// Optional JSON Schema that event `data` must match.
    pub schema: Option<Value>,
}

/// Body of `PATCH /v1/event-types/{name}`; absent fields are left as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTypePatch {
    /// New description.
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// New schema; `null` removes it.
    #[serde(default, deserialize_with = "super::double_option")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Option<Value>>,
    /// `false` restores an archived type.
    pub archived: Option<bool>,
}

/// An event type.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeOut {
    /// The name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// JSON Schema for `data`, if any.
    pub schema: Option<Value>,
    /// Archived types accept no new events or subscriptions.
    pub archived: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<EventType> for EventTypeOut {
    fn from(t: EventType) -> Self {
        EventTypeOut {
            created_at: crate::domain::time::format_micros(t.created_at),
            updated_at: crate::domain::time::format_micros(t.updated_at),
            name: t.name,
            description: t.description,
            schema: t.schema,
            archived: t.archived,
        }
    }
}

/// A page of event types.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeList {
    /// Items, by name.
    pub data: Vec<EventTypeOut>,
    /// Cursor of the next page, `null` on the last.
    pub next_cursor: Option<String>,
}

/// Filters of `GET /v1/event-types`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventTypeFilter {
    /// Include archived types (`true` or `false`).
    #[param(value_type = Option<bool>)]
    pub include_archived: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    page: PageParams,
}

fn check_description(invalid: &mut Invalid, description: &str) {
    check_text(invalid, "description", description, MAX_DESCRIPTION);
}

fn check_schema(invalid: &mut Invalid, schema: Option<&Value>) {
    if let Some(schema) = schema
        && let Err(why) = validate_schema(schema)
    {
        invalid.push("schema", why);
    }
}

/// Create an event type.
#[utoipa::path(post, path = "/v1/event-types", tag = "event types", request_body = EventTypeIn,
    params(super::idempotency::IdempotencyKeyHeader),
    responses((status = 201, description = "Created", body = EventTypeOut), ErrorResponses))]
pub async fn create_event_type(
    Admin(state): Admin,
    ApiJson(body): ApiJson<EventTypeIn>,
) -> Result<(StatusCode, Json<EventTypeOut>), ApiError> {
    let mut invalid = Invalid::default();
    if let Err(why) = validate_name(&body.name) {
        invalid.push("name", why);
    } else if body.name == crate::domain::event_type::WEBHOOK_TEST {
        invalid.push("name", "`webhook.test` is reserved for test events");
    }
    check_description(&mut invalid, &body.description);
    check_schema(&mut invalid, body.schema.as_ref());
    invalid.into_result().map_err(ApiError::Invalid)?;
    let now = now_micros();
    let event_type = EventType {
        name: body.name,
        description: body.description,
        schema: body.schema,
        archived: false,
        created_at: now,
        updated_at: now,
    };
    match state.store.insert_event_type(&event_type).await {
        Err(StoreError::Conflict(_)) => {
            Err(ApiError::Conflict(format!("event type `{}` already exists", event_type.name)))
        }
        other => other.map_err(ApiError::from),
    }?;
    Ok((StatusCode::CREATED, Json(event_type.into())))
}

/// List event types by name.
#[utoipa::path(get, path = "/v1/event-types", tag = "event types", params(EventTypeFilter, PageParams),
    responses((status = 200, description = "A page of event types, by name", body = EventTypeList), ErrorResponses))]
pub async fn list_event_types(
    AnyCaller(state): AnyCaller,
    ApiQuery(filter): ApiQuery<EventTypeFilter>,
) -> Result<Json<EventTypeList>, ApiError> {
    let include_archived = super::parse_bool("include_archived", filter.include_archived.as_deref())?;
    let pager = Pager::new(&filter.page, &format!("event-types|{include_archived}"))?;
    let rows = state.store.list_event_types(include_archived, &pager.query()).await?;
    let (rows, next_cursor) = pager.finish(rows, |t| &t.name);
    Ok(Json(EventTypeList { data: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

async fn load(state: &AppState, name: &str) -> Result<EventType, ApiError> {
    state.store.get_event_type(name).await.or_not_found("event type", name)
}

/// Get one event type.
#[utoipa::path(get, path = "/v1/event-types/{name}", tag = "event types",
    params(("name" = String, Path, description = "Event type name")),
    responses((status = 200, description = "The event type", body = EventTypeOut), ErrorResponses))]
pub async fn get_event_type(
    AnyCaller(state): AnyCaller,
    Path(name): Path<String>,
) -> Result<Json<EventTypeOut>, ApiError> {
    Ok(Json(load(&state, &name).await?.into()))
}

/// Update an event type's description, schema or archived flag.
#[utoipa::path(patch, path = "/v1/event-types/{name}", tag = "event types", request_body = EventTypePatch,
    params(("name" = String, Path, description = "Event type name")),
    responses((status = 200, description = "The event type", body = EventTypeOut), ErrorResponses))]
pub async fn update_event_type(
    Admin(state): Admin,
    Path(name): Path<String>,
    ApiJson(patch): ApiJson<EventTypePatch>,
) -> Result<Json<EventTypeOut>, ApiError> {
    let mut event_type = load(&state, &name).await?;
    let mut invalid = Invalid::default();
    if let Some(description) = patch.description {
        check_description(&mut invalid, &description);
        event_type.description = description;
    }
    if let Some(schema) = patch.schema {
        check_schema(&mut invalid, schema.as_ref());
        event_type.schema = schema;
    }
    if let Some(archived) = patch.archived {
        event_type.archived = archived;
    }
    invalid.into_result().map_err(ApiError::Invalid)?;
    event_type.updated_at = now_micros();
    state.store.update_event_type(&event_type).await?;
    state.lookups.forget_event_types();
    Ok(Json(event_type.into()))
}

/// Archive an event type: it stays readable but accepts no new events or subscriptions.
#[utoipa::path(delete, path = "/v1/event-types/{name}", tag = "event types",
    params(("name" = String, Path, description = "Event type name")),
    responses((status = 204, description = "archived"), ErrorResponses))]
pub async fn archive_event_type(
    Admin(state): Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut event_type = load(&state, &name).await?;
    if !event_type.archived {
        event_type.archived = true;
        event_type.updated_at = now_micros();
        state.store.update_event_type(&event_type).await?;
        state.lookups.forget_event_types();
    }
    Ok(StatusCode::NO_CONTENT)
}
