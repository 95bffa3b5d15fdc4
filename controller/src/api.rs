//! REST/JSON API (axum), bearer-token auth middleware, error mapping, serving with optional TLS.
//!
//! The OpenAPI document (`GET /openapi.json`, [`openapi`]) is generated from these handlers'
//! `#[utoipa::path]` attributes and the types' `ToSchema` derives: a route is registered with
//! the router and the document in one `routes!` line, so neither can miss one the other has.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as OpenApiDoc, RefOr};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use vgpu_pool_wire::{
    EnrollRequest, EnrollResponse, HeartbeatRequest, HeartbeatResponse, RegisterRequest,
    RegisterResponse,
};

use crate::auth::{Auth, Role, bearer, sha256_hex};
use crate::limits::{ConnGuard, ConnLimits};
use crate::model::{Allocation, AllocationRequest, Quota, Slice, SliceMode};
use crate::pool::{GpuView, HostView, Pool, PoolError, ProjectCreated, ProjectView};

#[derive(Clone)]
pub struct AppState {
    pub pool: Arc<Pool>,
    pub auth: Arc<Auth>,
    pub legacy_metrics: bool,
}

/// An error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub reason: Option<&'static str>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `quota_exceeded`,
    /// `no_capacity`, `conflict`, `timeout`, `store_error`, `internal`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// Which constraint refused the request. `no_capacity`: `sm`, `memory`, `profile` (a
    /// homogeneous GPU holds another shape), `unhealthy`, `too_large`, `drained`, `host_lost`,
    /// `no_gpus`; `quota_exceeded`: `allocations`, `memory`, `sm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            reason: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                reason: self.reason.map(str::to_string),
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        let (status, code) = match &e {
            PoolError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            PoolError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            PoolError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            PoolError::QuotaExceeded { .. } => (StatusCode::FORBIDDEN, "quota_exceeded"),
            PoolError::NoCapacity { .. } => (StatusCode::CONFLICT, "no_capacity"),
            PoolError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            PoolError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
        };
        let message = vgpu_protocol::error_chain(&e);
        if status.is_server_error() {
            log::error!("{message}");
        }
        let reason = match &e {
            PoolError::QuotaExceeded { reason, .. } | PoolError::NoCapacity { reason, .. } => {
                Some(*reason)
            }
            _ => None,
        };
        ApiError {
            reason,
            ..ApiError::new(status, code, message)
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// JSON body extractor whose rejections are JSON errors (400) like every other error.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => {
                let status = if rej.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                } else {
                    StatusCode::BAD_REQUEST
                };
                Err(ApiError::new(status, "bad_request", rej.body_text()))
            }
        }
    }
}

async fn auth_layer(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let hv = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(tok) = bearer(hv) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token (Authorization: Bearer <token>)",
        )
        .into_response();
    };
    let h = sha256_hex(tok);
    let role = st
        .auth
        .static_role(&h)
        .or_else(|| st.pool.role_for_token_hash(&h));
    match role {
        Some(r) => {
            req.extensions_mut().insert(r);
            next.run(req).await
        }
        None => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token").into_response()
        }
    }
}

fn need_admin(r: &Role) -> ApiResult<()> {
    match r {
        Role::Admin => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this needs the admin token",
        )),
    }
}

/// Registering and heartbeating host `host` needs that host's own credential (or the admin).
fn need_host(r: &Role, host: &str) -> ApiResult<()> {
    let refuse = |m: String| Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", m));
    match r {
        Role::Admin => Ok(()),
        Role::Host(h) if h == host => Ok(()),
        Role::Host(h) => refuse(format!(
            "this credential belongs to host {h:?}; it cannot act for host {host:?}"
        )),
        Role::Agent => refuse(
            "the pool's agent token only enrols hosts (POST /v1/agents/enroll); register and heartbeat with the host's own credential".into(),
        ),
        Role::Project(_) => refuse("this needs the host's agent credential".into()),
    }
}

fn not_agent(r: &Role) -> ApiResult<()> {
    match r {
        Role::Agent | Role::Host(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "agent tokens may only register and heartbeat",
        )),
        _ => Ok(()),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vGPU pool controller",
        description = "Inventory, placement, leases and quotas of the vGPU pool. All /v1 routes need `Authorization: Bearer <token>` (admin, agent or project token). Errors are `{\"error\": {\"code\", \"message\"}}`. Generated from the controller's types (utoipa)."
    ),
    components(schemas(ErrorBody)),
    modifiers(&Conventions),
    tags(
        (name = "auth"), (name = "hosts"), (name = "gpus"), (name = "slices"),
        (name = "allocations"), (name = "projects"), (name = "agents"), (name = "service")
    )
)]
struct ApiDoc;

/// What every `/v1` operation shares: the bearer scheme, and the error answers any of them may
/// give (each with the `ErrorBody` schema).
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut OpenApiDoc) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The error answers added to every `/v1` operation, after nesting.
const V1_ERRORS: [(&str, &str); 6] = [
    ("400", "Bad request: malformed JSON or invalid values"),
    ("401", "Missing or unknown bearer token"),
    (
        "403",
        "Not allowed for this token, or the project's quota exceeded (code quota_exceeded)",
    ),
    ("404", "Unknown id"),
    ("408", "The request was not done within the idle timeout"),
    ("409", "No capacity (code no_capacity) or a conflict"),
];

fn add_v1_conventions(doc: &mut OpenApiDoc) {
    use utoipa::openapi::ResponseBuilder;
    use utoipa::openapi::content::ContentBuilder;
    use utoipa::openapi::security::SecurityRequirement;
    let error = ContentBuilder::new()
        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            "ErrorBody",
        ))))
        .build();
    for (path, item) in doc.paths.paths.iter_mut() {
        let v1 = path.starts_with("/v1/");
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            if v1 {
                op.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
                for (status, desc) in V1_ERRORS {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| {
                            RefOr::T(
                                ResponseBuilder::new()
                                    .description(desc)
                                    .content("application/json", error.clone())
                                    .build(),
                            )
                        });
                }
            } else {
                op.security = Some(vec![SecurityRequirement::default()]);
            }
        }
    }
}

/// The `/v1` routes, each registered with its document entry.
fn v1_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(whoami))
        .routes(routes!(list_hosts))
        .routes(routes!(get_host))
        .routes(routes!(drain_host))
        .routes(routes!(undrain_host))
        .routes(routes!(list_gpus))
        .routes(routes!(get_gpu, patch_gpu))
        .routes(routes!(list_slices))
        .routes(routes!(list_allocations, create_allocation))
        .routes(routes!(get_allocation, delete_allocation))
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project, patch_project, delete_project))
        .routes(routes!(agent_enroll))
        .routes(routes!(agent_register))
        .routes(routes!(agent_heartbeat))
}

/// The routes outside `/v1`: no token needed.
fn service_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(openapi_json))
        .routes(routes!(metrics))
}

/// The OpenAPI 3.1 document of the API, generated from the routes and types.
pub fn openapi() -> OpenApiDoc {
    let (_, v1) = v1_routes().split_for_parts();
    let (_, doc) = service_routes().split_for_parts();
    let mut doc = doc.nest("/v1", v1);
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    add_v1_conventions(&mut doc);
    doc
}

/// The served document, built once.
#[derive(Clone)]
struct Document(Arc<serde_json::Value>);

pub fn router(st: AppState) -> Router {
    let doc = serde_json::to_value(openapi()).expect("the OpenAPI document serialises");
    let (v1, _) = v1_routes().split_for_parts();
    let v1 = v1.layer(middleware::from_fn_with_state(st.clone(), auth_layer));
    let (service, _) = service_routes().split_for_parts();
    service
        .nest("/v1", v1)
        .route("/", get(|| async { axum::response::Redirect::to("/console") }))
        .route("/console", get(|| async { console_file("index.html") }))
        .route("/console/{file}", get(|axum::extract::Path(f): axum::extract::Path<String>| async move { console_file(&f) }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(Extension(Document(Arc::new(doc))))
        .with_state(st)
}

/// The web console: a static page and its script over the REST API (`controller/console/`).
/// It holds no data; everything it shows comes from `/v1` with the user's token.
fn console_file(name: &str) -> Response {
    let (body, kind) = match name {
        "index.html" => (
            include_str!("../console/index.html"),
            "text/html; charset=utf-8",
        ),
        "console.js" => (
            include_str!("../console/console.js"),
            "text/javascript; charset=utf-8",
        ),
        "console.css" => (
            include_str!("../console/console.css"),
            "text/css; charset=utf-8",
        ),
        _ => {
            return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such console file")
                .into_response();
        }
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[derive(Serialize, Deserialize, ToSchema)]
struct Health {
    /// Always `ok`.
    status: String,
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "service", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
async fn openapi_json(Extension(Document(doc)): Extension<Document>) -> Json<serde_json::Value> {
    Json((*doc).clone())
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "OpenMetrics text exposition", content_type = "application/openmetrics-text", body = String)))]
async fn metrics(State(st): State<AppState>) -> Response {
    let body = crate::metrics::render(&st.pool.metrics_snapshot(), st.legacy_metrics);
    (
        [(
            header::CONTENT_TYPE,
            vgpu_pool_wire::prometheus::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}

/// The role a token has.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// `admin`, `agent`, `host` or `project`.
    pub role: String,
    /// The host, for a host's own credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The project, for a project token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// Role of the presented token.
#[utoipa::path(get, path = "/whoami", tag = "auth", responses((status = 200, body = WhoAmI)))]
async fn whoami(Extension(r): Extension<Role>) -> Json<WhoAmI> {
    let (role, host, project) = match r {
        Role::Admin => ("admin", None, None),
        Role::Agent => ("agent", None, None),
        Role::Host(h) => ("host", Some(h), None),
        Role::Project(p) => ("project", None, Some(p)),
    };
    Json(WhoAmI {
        role: role.into(),
        host,
        project,
    })
}

/// List hosts (admin).
#[utoipa::path(get, path = "/hosts", tag = "hosts", responses((status = 200, body = Vec<HostView>)))]
async fn list_hosts(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
) -> ApiResult<Json<Vec<HostView>>> {
    need_admin(&r)?;
    Ok(Json(st.pool.hosts()))
}

/// One host (admin).
#[utoipa::path(get, path = "/hosts/{name}", tag = "hosts",
    params(("name" = String, Path, description = "host name")),
    responses((status = 200, body = HostView)))]
async fn get_host(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
) -> ApiResult<Json<HostView>> {
    need_admin(&r)?;
    Ok(Json(st.pool.host(&name)?))
}

/// Drain: no new slices on this host's GPUs (admin).
#[utoipa::path(post, path = "/hosts/{name}/drain", tag = "hosts",
    params(("name" = String, Path, description = "host name")),
    responses((status = 200, body = HostView)))]
async fn drain_host(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
) -> ApiResult<Json<HostView>> {
    need_admin(&r)?;
    Ok(Json(st.pool.set_schedulable(&name, false)?))
}

/// Undo a drain (admin).
#[utoipa::path(post, path = "/hosts/{name}/undrain", tag = "hosts",
    params(("name" = String, Path, description = "host name")),
    responses((status = 200, body = HostView)))]
async fn undrain_host(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
) -> ApiResult<Json<HostView>> {
    need_admin(&r)?;
    Ok(Json(st.pool.set_schedulable(&name, true)?))
}

/// List GPUs with allocated and free capacity.
#[utoipa::path(get, path = "/gpus", tag = "gpus", responses((status = 200, body = Vec<GpuView>)))]
async fn list_gpus(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
) -> ApiResult<Json<Vec<GpuView>>> {
    not_agent(&r)?;
    Ok(Json(st.pool.gpus()))
}

/// One GPU.
#[utoipa::path(get, path = "/gpus/{uuid}", tag = "gpus",
    params(("uuid" = String, Path, description = "GPU UUID")),
    responses((status = 200, body = GpuView)))]
async fn get_gpu(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(uuid): Path<String>,
) -> ApiResult<Json<GpuView>> {
    not_agent(&r)?;
    Ok(Json(st.pool.gpu(&uuid)?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct GpuPatch {
    /// `homogeneous` or `mixed`.
    slice_mode: Option<String>,
    /// Compute oversubscription, 1 to 64; memory is never oversubscribed.
    oversubscription_ratio: Option<f64>,
    /// `healthy` or `unhealthy`.
    health: Option<String>,
}

/// Set the slice mode, the compute oversubscription ratio or the health (admin).
#[utoipa::path(patch, path = "/gpus/{uuid}", tag = "gpus",
    params(("uuid" = String, Path, description = "GPU UUID")),
    request_body = GpuPatch,
    responses((status = 200, body = GpuView)))]
async fn patch_gpu(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(uuid): Path<String>,
    ApiJson(p): ApiJson<GpuPatch>,
) -> ApiResult<Json<GpuView>> {
    need_admin(&r)?;
    let mode = match p.slice_mode.as_deref() {
        None => None,
        Some(m) => Some(SliceMode::parse(m).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("slice_mode {m:?} must be homogeneous or mixed"),
            )
        })?),
    };
    Ok(Json(st.pool.update_gpu(
        &uuid,
        mode,
        p.oversubscription_ratio,
        p.health,
    )?))
}

/// List the slices in use (project tokens see their own).
#[utoipa::path(get, path = "/slices", tag = "slices", responses((status = 200, body = Vec<Slice>)))]
async fn list_slices(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
) -> ApiResult<Json<Vec<Slice>>> {
    not_agent(&r)?;
    Ok(Json(st.pool.slices(&r)))
}

/// List allocations (project tokens see their own).
#[utoipa::path(get, path = "/allocations", tag = "allocations",
    responses((status = 200, body = Vec<Allocation>)))]
async fn list_allocations(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
) -> ApiResult<Json<Vec<Allocation>>> {
    not_agent(&r)?;
    Ok(Json(st.pool.allocations(&r)))
}

/// Allocate a slice: the VM's host first, then (allow_remote) hosts sharing its labels in
/// order of the topology preference, then any.
#[utoipa::path(post, path = "/allocations", tag = "allocations",
    request_body = AllocationRequest,
    responses((status = 201, description = "the allocation", body = Allocation)))]
async fn create_allocation(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    ApiJson(req): ApiJson<AllocationRequest>,
) -> ApiResult<(StatusCode, Json<Allocation>)> {
    not_agent(&r)?;
    let pool = st.pool.clone();
    // The decision itself is in-memory; the store write is a short SQLite transaction.
    let a = tokio::task::spawn_blocking(move || pool.allocate(&r, req))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok((StatusCode::CREATED, Json(a)))
}

/// One allocation.
#[utoipa::path(get, path = "/allocations/{id}", tag = "allocations",
    params(("id" = String, Path, description = "allocation id")),
    responses((status = 200, body = Allocation)))]
async fn get_allocation(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(id): Path<String>,
) -> ApiResult<Json<Allocation>> {
    not_agent(&r)?;
    Ok(Json(st.pool.get_allocation(&r, &id)?))
}

/// Release an allocation.
#[utoipa::path(delete, path = "/allocations/{id}", tag = "allocations",
    params(("id" = String, Path, description = "allocation id")),
    responses((status = 200, description = "the released allocation", body = Allocation)))]
async fn delete_allocation(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(id): Path<String>,
) -> ApiResult<Json<Allocation>> {
    not_agent(&r)?;
    Ok(Json(st.pool.release(&r, &id)?))
}

/// List projects with their usage (admin).
#[utoipa::path(get, path = "/projects", tag = "projects",
    responses((status = 200, body = Vec<ProjectView>)))]
async fn list_projects(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
) -> ApiResult<Json<Vec<ProjectView>>> {
    need_admin(&r)?;
    Ok(Json(st.pool.projects()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewProject {
    name: String,
    #[serde(default)]
    quota: Quota,
}

/// Create a project; the answer holds its token, shown once (admin).
#[utoipa::path(post, path = "/projects", tag = "projects",
    request_body = NewProject,
    responses((status = 201, description = "created", body = ProjectCreated)))]
async fn create_project(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    ApiJson(p): ApiJson<NewProject>,
) -> ApiResult<(StatusCode, Json<ProjectCreated>)> {
    need_admin(&r)?;
    Ok((
        StatusCode::CREATED,
        Json(st.pool.create_project(&p.name, p.quota)?),
    ))
}

/// One project (admin, or the project's own token).
#[utoipa::path(get, path = "/projects/{name}", tag = "projects",
    params(("name" = String, Path, description = "project name")),
    responses((status = 200, body = ProjectView)))]
async fn get_project(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
) -> ApiResult<Json<ProjectView>> {
    match &r {
        Role::Admin => {}
        Role::Project(p) if *p == name => {}
        _ => {
            return Err(PoolError::NotFound {
                kind: "project",
                id: name,
            }
            .into());
        }
    }
    Ok(Json(st.pool.project(&name)?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProjectPatch {
    quota: Quota,
}

/// Set a project's quota (admin).
#[utoipa::path(patch, path = "/projects/{name}", tag = "projects",
    params(("name" = String, Path, description = "project name")),
    request_body = ProjectPatch,
    responses((status = 200, body = ProjectView)))]
async fn patch_project(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
    ApiJson(p): ApiJson<ProjectPatch>,
) -> ApiResult<Json<ProjectView>> {
    need_admin(&r)?;
    Ok(Json(st.pool.set_quota(&name, p.quota)?))
}

/// Delete a project that holds no allocations (admin).
#[utoipa::path(delete, path = "/projects/{name}", tag = "projects",
    params(("name" = String, Path, description = "project name")),
    responses((status = 204, description = "deleted")))]
async fn delete_project(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    need_admin(&r)?;
    st.pool.delete_project(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issue a host its own agent credential, shown once. The pool's agent token may do so only
/// for a host without one (409 otherwise); the admin token always, replacing the old one.
#[utoipa::path(post, path = "/agents/enroll", tag = "agents",
    request_body = EnrollRequest,
    responses((status = 201, description = "the credential", body = EnrollResponse)))]
async fn agent_enroll(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    Ok((StatusCode::CREATED, Json(st.pool.enroll(&r, &req.host)?)))
}

/// An agent registers its host and GPUs (that host's credential; 403 for another host's).
#[utoipa::path(post, path = "/agents/register", tag = "agents",
    request_body = RegisterRequest,
    responses((status = 200, description = "lease settings", body = RegisterResponse)))]
async fn agent_register(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<Json<RegisterResponse>> {
    need_host(&r, &req.name)?;
    Ok(Json(st.pool.register(req)?))
}

/// Agent heartbeat: reports its workers, renews leases, gets the assignments to run (that
/// host's credential). 404: register again.
#[utoipa::path(post, path = "/agents/{name}/heartbeat", tag = "agents",
    params(("name" = String, Path, description = "host name")),
    request_body = HeartbeatRequest,
    responses((status = 200, description = "the workers to run", body = HeartbeatResponse)))]
async fn agent_heartbeat(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> ApiResult<Json<HeartbeatResponse>> {
    need_host(&r, &name)?;
    Ok(Json(st.pool.heartbeat(&name, req)?))
}

/// Periodically return expired leases to the pool.
pub fn spawn_reclaimer(pool: Arc<Pool>) -> tokio::task::JoinHandle<()> {
    let every = (pool.cfg.lease_ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    tokio::spawn(async move {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            if let Err(e) = pool.reclaim(Instant::now()) {
                log::error!("reclaimer: {}", vgpu_protocol::error_chain(&e));
            }
        }
    })
}

/// Why serving the API stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("Cannot serve on the listening socket")]
    Listener(#[source] std::io::Error),
    #[error("Cannot load TLS certificate {} and key {}", cert.display(), key.display())]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Serve `app` on `listener`, over TLS when a certificate and key are given, until `shutdown`,
/// within `limits`: at most `max_connections` open connections (more are closed at once), and
/// a connection idle for `idle_timeout` (no byte either way, no complete request headers, no
/// first request, a TLS handshake not done, or a request not answered) is closed.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    tls: Option<(PathBuf, PathBuf)>,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let bound = limits.idle_timeout;
    let app = app.layer(middleware::from_fn(
        move |req: Request, next: Next| async move {
            match tokio::time::timeout(bound, next.run(req)).await {
                Ok(r) => r,
                Err(_) => ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!("the request was not done within {bound:?}"),
                )
                .into_response(),
            }
        },
    ));
    let handle = axum_server::Handle::<SocketAddr>::new();
    let h2 = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h2.graceful_shutdown(Some(Duration::from_secs(2)));
    });
    let mut server = axum_server::from_tcp(listener)
        .map_err(ServeError::Listener)?
        .handle(handle)
        .first_request_timeout(bound);
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(bound));
    let guard = ConnGuard::new(limits);
    match tls {
        None => {
            server
                .acceptor(guard)
                .serve(app.into_make_service())
                .await
                .map_err(ServeError::Listener)?;
        }
        Some((cert, key)) => {
            let cfg = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .map_err(|source| ServeError::Tls {
                    cert: cert.clone(),
                    key: key.clone(),
                    source,
                })?;
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(cfg)
                .handshake_timeout(bound)
                .acceptor(guard);
            server
                .acceptor(acceptor)
                .serve(app.into_make_service())
                .await
                .map_err(ServeError::Listener)?;
        }
    }
    Ok(())
}
