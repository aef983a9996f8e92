//! The HTTP API. Handlers translate between JSON and the daemon's functions; everything but
//! `/health` requires `Authorization: Bearer <current token>`.
//!
//! | route | auth | does |
//! |---|---|---|
//! | `GET /health` | no | `{"status":"ok","version":…}` |
//! | `GET /status` | yes | runner id, notify state and the GitHub runner's state |
//! | `POST /exec` | yes | runs a command ([`crate::exec`]) |
//! | `POST /refresh` | yes | re-reads the config and re-installs the identity |
//! | `POST /setup` | yes | starts the runner's setup script, detached ([`crate::setup`]) |
//! | `POST /setup/log` | yes | a piece of the setup script's log: its end, or from a position |

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shoes_vz_guest_config::GuestConfig;
use tracing::{info, warn};

use crate::agent::{NotifyState, RefreshError, RefreshSource, Shared};
use crate::exec::{self, ExecRequest};
use crate::identity::files::under_root;
use crate::notify::VERSION;
use crate::runner_state::{self, RunnerStatus};
use crate::setup::{SetupError, SetupRequest, SetupStatus};

/// Scripts are the largest bodies; a setup script is a few KiB.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let protected = Router::new()
        .route("/status", get(status))
        .route("/exec", post(exec_handler))
        .route("/refresh", post(refresh))
        .route("/setup", post(setup_handler))
        .route("/setup/log", post(setup_log))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// An error answer: `{"error": "..."}` with a status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// The error and its causes, for errors that hold no secrets.
    fn from_error(status: StatusCode, err: &dyn std::error::Error) -> ApiError {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        ApiError::new(status, message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: &self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Parses a body without echoing serde's message, which can quote values (scripts,
/// tokens).
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| {
        let what = match err.classify() {
            serde_json::error::Category::Data => "a field is missing, unknown or of the wrong type",
            serde_json::error::Category::Eof => "it ends too early",
            _ => "it is not valid JSON",
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the request body was refused: {what} (line {}, column {})",
                err.line(),
                err.column()
            ),
        )
    })
}

async fn require_token(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    let allowed = presented.is_some_and(|token| shared.token().matches(token));
    if !allowed {
        warn!(path = %request.uri().path(), presented = presented.is_some(), "refused a request without the right token");
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs `Authorization: Bearer <token>` with the runner's API token",
        )
        .into_response();
    }
    next.run(request).await
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: VERSION,
    })
}

/// The `/status` answer (also the type for clients to read it into).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    pub runner_id: String,
    pub version: String,
    pub notify: NotifyState,
    pub runner_dir: PathBuf,
    /// The setup script's progress, once `/setup` started it.
    #[serde(default)]
    pub setup: Option<SetupStatus>,
    #[serde(flatten)]
    pub runner: RunnerStatus,
}

async fn status(State(shared): State<Arc<Shared>>) -> Result<Json<StatusResponse>, ApiError> {
    let config = shared.config();
    let runner_dir = under_root(&shared.opts.identity.root, &config.runner_dir)
        .map_err(|err| ApiError::from_error(StatusCode::INTERNAL_SERVER_ERROR, &err))?;
    let runner = runner_state::gather(&runner_dir).await;
    Ok(Json(StatusResponse {
        runner_id: config.runner_id.clone(),
        version: VERSION.to_owned(),
        notify: *shared.notify_state.borrow(),
        setup: shared.setups.status(&config.runner_id),
        runner_dir,
        runner,
    }))
}

async fn setup_handler(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: SetupRequest = parse_json(&body)?;
    let runner_id = shared.config().runner_id.clone();
    info!(?request, "setup");
    match shared.setups.start(&runner_id, request) {
        Ok(started) => Ok(Json(started).into_response()),
        Err(err) => {
            let status = match &err {
                SetupError::Busy { .. } => StatusCode::CONFLICT,
                err if err.is_client_error() => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            warn!(error = %err, "setup refused");
            Err(ApiError::from_error(status, &err))
        }
    }
}

/// The `/setup/log` request: from a position of everything the script wrote, or its end.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupLogRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Default 64 KiB, at most 4 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// A piece of the setup log (invalid UTF-8 replaced) and where the next read continues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetupLogChunk {
    pub text: String,
    pub next_offset: u64,
}

/// Larger pieces are for a file copy, not an API answer.
const MAX_LOG_CHUNK: u64 = 4 * 1024 * 1024;

async fn setup_log(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<SetupLogChunk>, ApiError> {
    let request: SetupLogRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SetupLogRequest::default()
    } else {
        parse_json(&body)?
    };
    let max_bytes = request.max_bytes.unwrap_or(64 * 1024).min(MAX_LOG_CHUNK);
    let runner_id = shared.config().runner_id.clone();
    let (data, next_offset) = shared
        .setups
        .log_from(&runner_id, request.offset, max_bytes)
        .map_err(|err| ApiError::from_error(StatusCode::INTERNAL_SERVER_ERROR, &err))?;
    Ok(Json(SetupLogChunk {
        text: String::from_utf8_lossy(&data).into_owned(),
        next_offset,
    }))
}

async fn exec_handler(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ExecRequest = parse_json(&body)?;
    let _slot = Arc::clone(&shared.exec_slots)
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many commands are running; retry later",
            )
        })?;
    info!(?request, "exec");
    let outcome = exec::run(request, &shared.opts.identity.root, &shared.opts.exec).await;
    match outcome {
        Ok(response) => {
            info!(pid = response.pid, exit_code = ?response.exit_code, signal = ?response.signal, timed_out = response.timed_out, duration_ms = response.duration_ms, "exec finished");
            Ok(Json(response).into_response())
        }
        Err(err) => {
            let status = if err.is_client_error() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            Err(ApiError::from_error(status, &err))
        }
    }
}

/// The `/refresh` body: the new config inline, or a device/image to read it from; an empty
/// body (or `{}`) reads the boot config device again.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<GuestConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_device: Option<PathBuf>,
    /// Answer with the signed notice instead of notifying (the caller is the host itself):
    /// a restored guest then spends nothing on a notify while the host connects to it.
    /// Older runner-agents refuse the field (400); the host then asks without it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reply_notice: bool,
}

async fn refresh(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, ApiError> {
    let request: RefreshRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RefreshRequest::default()
    } else {
        parse_json(&body)?
    };
    let reply_notice = request.reply_notice;
    let source = match (request.config, request.config_device) {
        (Some(config), None) => RefreshSource::Inline(Box::new(config)),
        (None, Some(path)) if path.is_absolute() => RefreshSource::Device(path),
        (None, Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "config_device must be an absolute path",
            ))
        }
        (None, None) => RefreshSource::Default,
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give config or config_device, not both",
            ))
        }
    };
    match shared.refresh(source, reply_notice).await {
        Ok(report) => Ok(Json(report).into_response()),
        Err(err) => {
            let status = match err {
                RefreshError::Invalid(_) | RefreshError::Load(_) => StatusCode::BAD_REQUEST,
                RefreshError::Identity(_) | RefreshError::Notice(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            warn!(error = %err, "refresh failed");
            Err(ApiError::from_error(status, &err))
        }
    }
}
