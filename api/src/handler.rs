//! The seam between the API thread and the VMM: [`ApiHandler`] and [`ApiResponse`], plus a
//! channel-based handler for a VMM whose controller thread runs its own event loop.

use std::sync::mpsc;

use serde::Serialize;

use crate::request::ApiRequest;

/// The VMM's answer to one [`ApiRequest`].
#[derive(Clone, Debug, PartialEq)]
pub enum ApiResponse {
    /// 204 No Content: success without a body.
    NoContent,
    /// 200 with a JSON body.
    Json(serde_json::Value),
    /// 200 with Prometheus text (`GET /metrics`).
    Text(String),
    /// An error status (4xx/5xx) with `{"fault_message": …}`.
    Error { status: u16, fault_message: String },
}

impl ApiResponse {
    /// 200 with `value` serialized as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::to_value(value) {
            Ok(value) => Self::Json(value),
            Err(e) => Self::error(500, format!("cannot serialize the response: {e}")),
        }
    }

    /// 400 Bad Request: the request is well formed but not acceptable now (e.g. a pre-boot
    /// operation after boot); say why.
    pub fn bad_request(fault_message: impl Into<String>) -> Self {
        Self::error(400, fault_message)
    }

    /// Any error status. Out-of-range codes become 500.
    pub fn error(status: u16, fault_message: impl Into<String>) -> Self {
        let status = if (400..600).contains(&status) {
            status
        } else {
            500
        };
        Self::Error {
            status,
            fault_message: fault_message.into(),
        }
    }
}

/// Implemented by the VMM. Called on the API thread, one request at a time, in arrival order.
///
/// It must answer promptly: requests that take long (migration, snapshot of a large guest)
/// start the work elsewhere and answer at once, reporting progress through a `GET` endpoint.
/// It must not panic (ferry builds with `panic = "abort"`).
pub trait ApiHandler: Send + Sync + 'static {
    fn handle(&self, request: ApiRequest) -> ApiResponse;
}

impl<F> ApiHandler for F
where
    F: Fn(ApiRequest) -> ApiResponse + Send + Sync + 'static,
{
    fn handle(&self, request: ApiRequest) -> ApiResponse {
        self(request)
    }
}

/// A request waiting for the VMM's answer; answer it with [`PendingRequest::respond`].
/// Dropping it unanswered makes the client see a 500.
#[derive(Debug)]
pub struct PendingRequest {
    pub request: ApiRequest,
    reply: mpsc::SyncSender<ApiResponse>,
}

impl PendingRequest {
    pub fn respond(self, response: ApiResponse) {
        // The API thread waits for this; if it is gone the process is shutting down.
        let _ = self.reply.send(response);
    }
}

/// An [`ApiHandler`] that forwards each request to the VMM's controller thread over a channel,
/// calls `wake` (e.g. writes an eventfd the controller polls) and waits for the answer.
/// vCPU and device threads are never involved.
pub struct ChannelHandler {
    sender: mpsc::Sender<PendingRequest>,
    wake: Box<dyn Fn() + Send + Sync>,
}

impl ChannelHandler {
    /// The handler for [`crate::serve`] and the receiving end for the controller, which drains
    /// it with `try_recv` whenever `wake` has fired.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> (Self, mpsc::Receiver<PendingRequest>) {
        let (sender, receiver) = mpsc::channel();
        (
            Self {
                sender,
                wake: Box::new(wake),
            },
            receiver,
        )
    }
}

impl ApiHandler for ChannelHandler {
    fn handle(&self, request: ApiRequest) -> ApiResponse {
        let (reply, answer) = mpsc::sync_channel(1);
        if self.sender.send(PendingRequest { request, reply }).is_err() {
            return ApiResponse::error(503, "the VMM is shutting down");
        }
        (self.wake)();
        answer
            .recv()
            .unwrap_or_else(|_| ApiResponse::error(500, "the VMM dropped the request unanswered"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_handler_round_trip() {
        let (handler, receiver) = ChannelHandler::new(|| {});
        let controller = std::thread::spawn(move || {
            let pending = receiver.recv().expect("request");
            assert_eq!(pending.request, ApiRequest::GetMachineConfig);
            pending.respond(ApiResponse::NoContent);
            // The next one is dropped unanswered.
            drop(receiver.recv().expect("request"));
        });
        assert_eq!(
            handler.handle(ApiRequest::GetMachineConfig),
            ApiResponse::NoContent
        );
        assert!(matches!(
            handler.handle(ApiRequest::GetMetrics),
            ApiResponse::Error { status: 500, .. }
        ));
        controller.join().expect("controller");
        assert!(matches!(
            handler.handle(ApiRequest::GetMetrics),
            ApiResponse::Error { status: 503, .. }
        ));
    }

    #[test]
    fn error_status_is_an_error() {
        assert_eq!(
            ApiResponse::error(204, "x"),
            ApiResponse::Error {
                status: 500,
                fault_message: "x".into()
            }
        );
        assert_eq!(
            ApiResponse::bad_request("y"),
            ApiResponse::Error {
                status: 400,
                fault_message: "y".into()
            }
        );
    }
}
