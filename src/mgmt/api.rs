//! The management API: RabbitMQ's HTTP API (`/api/...`) on the management listener, with
//! HTTP Basic against the broker's users, and the same routes on the admin socket for
//! `lepusctl`, where the socket file's permissions stand in for a login.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use super::body_room::{BODY_ROOM_WAIT_S, MAX_BODY_BYTES, MAX_BODY_BYTES_IN_FLIGHT};
use super::http::{ApiError, Caller, normalise_path};
use super::listener::{Bounded, HTTP_HEAD_TIMEOUT, Peer};
pub use super::state::Mgmt;

/// Every route of the API, for either listener.
pub fn routes() -> Router<Arc<Mgmt>> {
    Router::new()
        .merge(super::overview::routes())
        .merge(super::health::routes())
        .merge(super::users::routes())
        .merge(super::user_limits::routes())
        .merge(super::vhosts::routes())
        .merge(super::queues::routes())
        .merge(super::exchanges::routes())
        .merge(super::bindings::routes())
        .merge(super::connections::routes())
        .merge(super::definitions::routes())
        .fallback(|| async { ApiError::not_found() })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Binds the management listener and serves the API (and the web UI) until aborted.
pub async fn serve(
    mgmt: Arc<Mgmt>,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let listener = Bounded::with_room(listener, mgmt.broker.connections.http_connections() / 2);
    // The UI's static files are served without a login; everything under /api needs one.
    let app = super::ui::routes()
        .merge(routes().layer(middleware::from_fn_with_state(mgmt.clone(), authenticate)))
        .layer(middleware::from_fn(same_origin_changes))
        .layer(middleware::from_fn_with_state(
            mgmt.answers.clone(),
            super::answer_room::hold_answers,
        ))
        .with_state(mgmt);
    let app = tower::ServiceExt::map_request(app, normalise_path);
    Ok((
        local,
        tokio::spawn(super::listener::serve(listener, app, HTTP_HEAD_TIMEOUT)),
    ))
}

/// Refuses a change (any method but GET and HEAD) that a browser sent from another site's
/// page: a browser that has cached Basic credentials for this origin would otherwise attach
/// them to a form another site makes it POST (a definitions import, a user). Browsers name
/// the page's origin in `Origin`; tools (rabbitmqadmin, curl, client libraries) send none,
/// and the web UI's own requests come from this origin.
async fn same_origin_changes(req: Request, next: Next) -> Response {
    let reading = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    match origin {
        Some(origin) if !reading => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            if Some(origin_host) != host {
                return ApiError::forbidden("cross-origin request refused").into_response();
            }
        }
        _ => {}
    }
    next.run(req).await
}

/// HTTP Basic against the broker's users: the user must exist, give the right password, be
/// allowed in from where they connect (`loopback_users`) and have a management tag.
async fn authenticate(
    State(mgmt): State<Arc<Mgmt>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some((name, password)) = basic_credentials(&req) else {
        return challenge(&req, None);
    };
    let broker = &mgmt.broker;
    let user = match broker.user(&name) {
        Some(u) if u.password_matches(&password) => u,
        _ => return challenge(&req, Some("Login failed")),
    };
    if broker.config.loopback_users.iter().any(|u| *u == user.name)
        && !crate::auth::is_loopback(peer.ip())
    {
        return challenge(&req, Some("Login failed"));
    }
    const MANAGEMENT_TAGS: [&str; 4] = ["administrator", "monitoring", "policymaker", "management"];
    if !MANAGEMENT_TAGS.iter().any(|t| user.has_tag(t)) {
        return ApiError::not_authorised("Not management user").into_response();
    }
    // Held until the answer is made, so the body has been read (or dropped) by then.
    let _room = match mgmt
        .bodies
        .reserve(&user.name, announced_body_bytes(&req))
        .await
    {
        Ok(room) => room,
        Err(e) => return e.into_response(),
    };
    let name = user.name.clone();
    req.extensions_mut().insert(Caller::User(user));
    let mut answer = next.run(req).await;
    answer
        .extensions_mut()
        .insert(super::answer_room::AnsweredFor(name));
    answer
}

/// The bytes of body `req` announces: a body past [`MAX_BODY_BYTES`] counts only that much,
/// as it is refused (413) once that much is read.
fn announced_body_bytes(req: &Request) -> usize {
    let headers = req.headers();
    match headers.get(header::CONTENT_LENGTH) {
        Some(len) => len
            .to_str()
            .ok()
            .and_then(|l| l.parse::<u64>().ok())
            .map_or(MAX_BODY_BYTES, |l| l.min(MAX_BODY_BYTES as u64) as usize),
        None if headers.contains_key(header::TRANSFER_ENCODING) => MAX_BODY_BYTES,
        None => 0,
    }
}

fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

/// RabbitMQ's 401: an empty body without credentials, `Login failed` with wrong ones. A
/// script's request (`X-Requested-With`, as the web UI sends) gets no `WWW-Authenticate`, so
/// that a failed login shows in the page rather than as the browser's own password dialog.
fn challenge(req: &Request, reason: Option<&str>) -> Response {
    let mut response = match reason {
        None => StatusCode::UNAUTHORIZED.into_response(),
        Some(reason) => (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "not_authorized", "reason": reason})),
        )
            .into_response(),
    };
    if req.headers().contains_key("x-requested-with") {
        return response;
    }
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
    );
    response
}
