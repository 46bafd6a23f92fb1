//! The API server: hyper HTTP/1.1 on a current-thread tokio runtime confined to one thread.
//!
//! [`serve`] binds the socket in the caller's thread (so the socket accepts connections as soon
//! as it returns) and leaves everything slower — the runtime, the first accept — to the API
//! thread. Each request is read with a size cap and timeouts, routed and validated
//! ([`crate::request`]), and only then handed to the [`ApiHandler`].

use std::convert::Infallible;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::handler::{ApiHandler, ApiResponse};
use crate::request::{route, RequestError, Routed};
use crate::ApiError;

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Connections served at once; further ones are closed on accept.
pub const MAX_CONNECTIONS: usize = 32;
/// A client must send a request's headers within this time (and idle keep-alive connections
/// are closed after it), so slow or silent clients cannot hold connection slots.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send a request's body within this time.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The Firecracker API level ferry speaks, reported as `firecracker_version` by `GET /version`.
pub const FIRECRACKER_API_VERSION: &str = "1.7.0";

/// A refused body up to this size is read (and dropped) before the answer, so that the client
/// gets the answer; a larger one is not worth reading, and its connection is just closed.
const DRAIN_LIMIT_BYTES: u64 = 1 << 20;
/// Firecracker's default request body limit (its `--http-api-max-payload-size`), bytes.
pub const FIRECRACKER_MAX_PAYLOAD_BYTES: usize = 51_200;

/// How a body over the limit is answered (the connection is closed either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Oversize {
    /// 413 Payload Too Large: ferry's own API.
    PayloadTooLarge,
    /// 400 Bad Request: what Firecracker's HTTP server answers, for `ferry firecracker`, whose
    /// clients match Firecracker's statuses.
    BadRequest,
}

/// Limits of a server; [`serve`] uses the defaults (the constants above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    pub oversize: Oversize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            max_body_bytes: MAX_BODY_BYTES,
            oversize: Oversize::PayloadTooLarge,
        }
    }
}

impl ServerOptions {
    /// Firecracker's limits: a body limit of `max_payload` bytes (Firecracker's default when
    /// `None`), answered with 400 when exceeded.
    pub fn firecracker(max_payload: Option<usize>) -> Self {
        Self {
            max_body_bytes: max_payload.unwrap_or(FIRECRACKER_MAX_PAYLOAD_BYTES),
            oversize: Oversize::BadRequest,
            ..Self::default()
        }
    }
}

/// A running API server. The thread stops on [`ApiServerHandle::shutdown`] or process exit.
#[derive(Debug)]
pub struct ApiServerHandle {
    path: PathBuf,
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServerHandle {
    /// The socket path being served.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, drops open connections, joins the API thread and removes the socket.
    pub fn shutdown(mut self) {
        self.stop.raise();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the API on `socket_path` (created with mode 0600; a stale socket is replaced, a live
/// one is an error). Returns once the socket is listening; requests go to `handler` on a new
/// thread named `ferry-api`.
pub fn serve(
    socket_path: &Path,
    handler: Arc<dyn ApiHandler>,
) -> Result<ApiServerHandle, ApiError> {
    serve_with(socket_path, handler, ServerOptions::default())
}

/// [`serve`] with other limits (tests use short timeouts).
pub fn serve_with(
    socket_path: &Path,
    handler: Arc<dyn ApiHandler>,
    options: ServerOptions,
) -> Result<ApiServerHandle, ApiError> {
    let listener = crate::socket::bind(socket_path)?;
    let stop = Arc::new(StopSignal::default());
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ferry-api".into())
        .spawn(move || {
            crate::thread_hook::started();
            run(listener, handler, thread_stop, options)
        })
        .map_err(ApiError::Thread)?;
    Ok(ApiServerHandle {
        path: socket_path.into(),
        stop,
        thread: Some(thread),
    })
}

/// The API thread's body.
fn run(
    listener: StdUnixListener,
    handler: Arc<dyn ApiHandler>,
    stop: Arc<StopSignal>,
    options: ServerOptions,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            log::error!("API server: cannot start its runtime: {e}");
            return;
        }
    };
    runtime.block_on(accept_loop(listener, handler, stop, options));
}

/// Tells the accept loop to stop, from any thread.
#[derive(Debug, Default)]
struct StopSignal {
    raised: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl StopSignal {
    fn raise(&self) {
        self.raised.store(true, Ordering::SeqCst);
        if let Ok(mut waker) = self.waker.lock() {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
    }

    /// Whether stop was raised; if not, arranges for `cx` to be woken when it is.
    fn poll_raised(&self, cx: &mut Context<'_>) -> bool {
        if let Ok(mut waker) = self.waker.lock() {
            *waker = Some(cx.waker().clone());
        }
        self.raised.load(Ordering::SeqCst)
    }
}

/// Decrements the open-connection count when a connection task ends, however it ends.
struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: StdUnixListener,
    handler: Arc<dyn ApiHandler>,
    stop: Arc<StopSignal>,
    options: ServerOptions,
) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            log::error!("API server: cannot register the socket: {e}");
            return;
        }
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        // hyper's read buffer: at least its minimum of 8 KiB; bodies are streamed past it.
        .max_buf_size(MAX_BODY_BYTES.max(8192))
        .auto_date_header(false);
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = std::future::poll_fn(|cx| {
            if stop.poll_raised(cx) {
                return Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        let Some(accepted) = accepted else {
            return;
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener stays.
                log::warn!("API server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::SeqCst) >= options.max_connections {
            log::warn!(
                "API server: {} connections open; closing a new one",
                options.max_connections
            );
            drop(stream);
            continue;
        }
        open.fetch_add(1, Ordering::SeqCst);
        let slot = ConnectionSlot(open.clone());
        let handler = handler.clone();
        let connection = http.serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(respond(request, &*handler, options).await) }
            }),
        );
        tokio::spawn(async move {
            let _slot = slot;
            // A client that misbehaves only loses its own connection.
            let _ = connection.await;
        });
    }
}

/// Reads, routes and answers one request.
async fn respond(
    request: Request<Incoming>,
    handler: &dyn ApiHandler,
    options: ServerOptions,
) -> Response<Full<Bytes>> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&len| len > options.max_body_bytes as u64) {
        if size <= DRAIN_LIMIT_BYTES {
            // Read the refused body before answering: closing a Unix socket with unread bytes
            // resets it, and the client would see ECONNRESET instead of the answer.
            let mut body = request.into_body();
            let drain = async { while let Some(Ok(_)) = body.frame().await {} };
            let _ = tokio::time::timeout(options.body_timeout, drain).await;
        }
        return closing(oversize(&options, Some(size)));
    }
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(
        options.body_timeout,
        Limited::new(body, options.max_body_bytes).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return closing(oversize(&options, None));
        }
        Ok(Err(e)) => return closing(error(400, &format!("cannot read the request body: {e}"))),
        Err(_) => return closing(error(408, "timed out reading the request body")),
    };
    match route(parts.method.as_str(), parts.uri.path(), &body) {
        Ok(Routed::Version) => from_api(ApiResponse::Json(serde_json::json!({
            "firecracker_version": FIRECRACKER_API_VERSION,
            "ferry_version": crate::VERSION,
        }))),
        Ok(Routed::Vmm(request)) => from_api(handler.handle(request)),
        Err(e) => from_request_error(&e),
    }
}

/// The answer to a body over the limit (`size`: its declared length, when it was declared).
fn oversize(options: &ServerOptions, size: Option<u64>) -> Response<Full<Bytes>> {
    let error = RequestError::PayloadTooLarge {
        limit: options.max_body_bytes,
        size,
    };
    match options.oversize {
        Oversize::PayloadTooLarge => from_request_error(&error),
        Oversize::BadRequest => self::error(400, &error.fault_message()),
    }
}

fn with_body(status: u16, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn error(status: u16, fault_message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&serde_json::json!({ "fault_message": fault_message }))
        .unwrap_or_default();
    with_body(status, "application/json", body)
}

fn from_api(response: ApiResponse) -> Response<Full<Bytes>> {
    match response {
        ApiResponse::NoContent => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        ApiResponse::Json(value) => with_body(
            200,
            "application/json",
            serde_json::to_vec(&value).unwrap_or_default(),
        ),
        ApiResponse::Text(text) => with_body(200, "text/plain; version=0.0.4", text.into_bytes()),
        ApiResponse::Error {
            status,
            fault_message,
        } => error(status, &fault_message),
    }
}

fn from_request_error(e: &RequestError) -> Response<Full<Bytes>> {
    let mut response = error(e.status(), &e.fault_message());
    if let RequestError::MethodNotAllowed { allow, .. } = e {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
    }
    response
}

/// Marks a response as the last on its connection (its body may be left unread).
fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}
