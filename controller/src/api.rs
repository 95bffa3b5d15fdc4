//! REST/JSON API (axum), bearer-token auth middleware, error mapping, serving with optional TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use vgpu_pool_wire::{EnrollRequest, HeartbeatRequest, RegisterRequest};

use crate::auth::{Auth, Role, bearer, sha256_hex};
use crate::limits::{ConnGuard, ConnLimits};
use crate::model::{AllocationRequest, Quota, SliceMode};
use crate::pool::{Pool, PoolError};

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
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        let (status, code) = match &e {
            PoolError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            PoolError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            PoolError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            PoolError::QuotaExceeded(_) => (StatusCode::FORBIDDEN, "quota_exceeded"),
            PoolError::NoCapacity(_) => (StatusCode::CONFLICT, "no_capacity"),
            PoolError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            PoolError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
        };
        let message = vgpu_protocol::error_chain(&e);
        if status.is_server_error() {
            log::error!("{message}");
        }
        ApiError::new(status, code, message)
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

pub fn router(st: AppState) -> Router {
    let v1 = Router::new()
        .route("/hosts", get(list_hosts))
        .route("/hosts/{name}", get(get_host))
        .route("/hosts/{name}/drain", post(drain_host))
        .route("/hosts/{name}/undrain", post(undrain_host))
        .route("/gpus", get(list_gpus))
        .route("/gpus/{uuid}", get(get_gpu).patch(patch_gpu))
        .route("/slices", get(list_slices))
        .route(
            "/allocations",
            get(list_allocations).post(create_allocation),
        )
        .route(
            "/allocations/{id}",
            get(get_allocation).delete(delete_allocation),
        )
        .route("/projects", get(list_projects).post(create_project))
        .route(
            "/projects/{name}",
            get(get_project).patch(patch_project).delete(delete_project),
        )
        .route("/agents/enroll", post(agent_enroll))
        .route("/agents/register", post(agent_register))
        .route("/agents/{name}/heartbeat", post(agent_heartbeat))
        .route("/whoami", get(whoami))
        .layer(middleware::from_fn_with_state(st.clone(), auth_layer));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
        .route("/metrics", get(metrics))
        .route("/", get(|| async { axum::response::Redirect::to("/console") }))
        .route("/console", get(|| async { console_file("index.html") }))
        .route("/console/{file}", get(|axum::extract::Path(f): axum::extract::Path<String>| async move { console_file(&f) }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
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

async fn whoami(Extension(r): Extension<Role>) -> Json<serde_json::Value> {
    Json(match r {
        Role::Admin => json!({"role": "admin"}),
        Role::Agent => json!({"role": "agent"}),
        Role::Host(h) => json!({"role": "host", "host": h}),
        Role::Project(p) => json!({"role": "project", "project": p}),
    })
}

async fn list_hosts(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
) -> ApiResult<Response> {
    need_admin(&r)?;
    Ok(Json(st.pool.hosts()).into_response())
}

async fn get_host(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    need_admin(&r)?;
    Ok(Json(st.pool.host(&name)?).into_response())
}

async fn drain_host(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    need_admin(&r)?;
    Ok(Json(st.pool.set_schedulable(&name, false)?).into_response())
}

async fn undrain_host(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    need_admin(&r)?;
    Ok(Json(st.pool.set_schedulable(&name, true)?).into_response())
}

async fn list_gpus(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
) -> ApiResult<Response> {
    not_agent(&r)?;
    Ok(Json(st.pool.gpus()).into_response())
}

async fn get_gpu(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(uuid): Path<String>,
) -> ApiResult<Response> {
    not_agent(&r)?;
    Ok(Json(st.pool.gpu(&uuid)?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuPatch {
    slice_mode: Option<String>,
    oversubscription_ratio: Option<f64>,
    health: Option<String>,
}

async fn patch_gpu(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(uuid): Path<String>,
    ApiJson(p): ApiJson<GpuPatch>,
) -> ApiResult<Response> {
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
    Ok(Json(
        st.pool
            .update_gpu(&uuid, mode, p.oversubscription_ratio, p.health)?,
    )
    .into_response())
}

async fn list_slices(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
) -> ApiResult<Response> {
    not_agent(&r)?;
    Ok(Json(st.pool.slices(&r)).into_response())
}

async fn list_allocations(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
) -> ApiResult<Response> {
    not_agent(&r)?;
    Ok(Json(st.pool.allocations(&r)).into_response())
}

async fn create_allocation(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    ApiJson(req): ApiJson<AllocationRequest>,
) -> ApiResult<Response> {
    not_agent(&r)?;
    let pool = st.pool.clone();
    // The decision itself is in-memory; the store write is a short SQLite transaction.
    let a = tokio::task::spawn_blocking(move || pool.allocate(&r, req))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok((StatusCode::CREATED, Json(a)).into_response())
}

async fn get_allocation(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    not_agent(&r)?;
    Ok(Json(st.pool.get_allocation(&r, &id)?).into_response())
}

async fn delete_allocation(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    not_agent(&r)?;
    Ok(Json(st.pool.release(&r, &id)?).into_response())
}

async fn list_projects(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
) -> ApiResult<Response> {
    need_admin(&r)?;
    Ok(Json(st.pool.projects()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProject {
    name: String,
    #[serde(default)]
    quota: Quota,
}

async fn create_project(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    ApiJson(p): ApiJson<NewProject>,
) -> ApiResult<Response> {
    need_admin(&r)?;
    Ok((
        StatusCode::CREATED,
        Json(st.pool.create_project(&p.name, p.quota)?),
    )
        .into_response())
}

async fn get_project(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
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
    Ok(Json(st.pool.project(&name)?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectPatch {
    quota: Quota,
}

async fn patch_project(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
    ApiJson(p): ApiJson<ProjectPatch>,
) -> ApiResult<Response> {
    need_admin(&r)?;
    Ok(Json(st.pool.set_quota(&name, p.quota)?).into_response())
}

async fn delete_project(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    need_admin(&r)?;
    st.pool.delete_project(&name)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn agent_enroll(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(st.pool.enroll(&r, &req.host)?)).into_response())
}

async fn agent_register(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<Response> {
    need_host(&r, &req.name)?;
    Ok(Json(st.pool.register(req)?).into_response())
}

async fn agent_heartbeat(
    State(st): State<AppState>,
    Extension(r): Extension<Role>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> ApiResult<Response> {
    need_host(&r, &name)?;
    Ok(Json(st.pool.heartbeat(&name, req)?).into_response())
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
