//! The ChatRoomService as it is served: the two client-streaming calls go to
//! [`super::streams`], every other call to the generated server (which `build.rs`
//! generates without those two).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use super::ChatRoomApi;
use super::server::chat_room_service_server::ChatRoomServiceServer;
use super::status::too_large;
use super::streams::{self, Streaming};

/// The streaming calls' paths.
const SUBSCRIBE_PATH: &str = "/chatroom.v1.ChatRoomService/Subscribe";
const LISTEN_PATH: &str = "/chatroom.v1.ChatRoomService/Listen";

/// The service: every call of the contract.
#[derive(Clone)]
pub struct Routes {
    api: ChatRoomApi,
    unary: ChatRoomServiceServer<ChatRoomApi>,
    /// The largest request message decoded, unary or stream frame; a bigger one is
    /// refused (RESOURCE_EXHAUSTED) before it is buffered whole.
    max_request_bytes: usize,
}

impl Routes {
    pub fn new(api: ChatRoomApi, max_request_bytes: usize) -> Self {
        Routes {
            unary: ChatRoomServiceServer::new(api.clone())
                .max_decoding_message_size(max_request_bytes),
            api,
            max_request_bytes,
        }
    }
}

impl NamedService for Routes {
    const NAME: &'static str = crate::proto::SERVICE_NAME;
}

impl tower_service::Service<http::Request<Body>> for Routes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower_service::Service::<http::Request<Body>>::poll_ready(&mut self.unary, cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let max_request_bytes = self.max_request_bytes;
        let streaming = match request.uri().path() {
            SUBSCRIBE_PATH => Some(Streaming::Subscribe),
            LISTEN_PATH => Some(Streaming::Listen),
            _ => None,
        };
        match streaming {
            // Boxed because verifying a token may wait for a JWKS fetch; the box is
            // freed once the stream's response is made.
            Some(call) => {
                let api = self.api.clone();
                Box::pin(
                    async move { Ok(streams::open(&api, max_request_bytes, request, call).await) },
                )
            }
            None => {
                let call = tower_service::Service::call(&mut self.unary, request);
                Box::pin(async move { Ok(sized(call.await?, max_request_bytes)) })
            }
        }
    }
}

/// A unary answer with [`too_large`] applied: tonic refuses an oversized request
/// before the handler runs, in a trailers-only answer (its status in the headers).
fn sized(response: http::Response<Body>, limit: usize) -> http::Response<Body> {
    let out_of_range = response
        .headers()
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"11");
    if !out_of_range {
        return response;
    }
    match Status::from_header_map(response.headers()) {
        Some(status) => too_large(status, limit).into_http(),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    /// The service's name as the health service reports it is the generated one.
    #[test]
    fn the_service_name_is_the_contracts() {
        use tonic::server::NamedService;
        assert_eq!(
            <super::ChatRoomServiceServer<super::ChatRoomApi> as NamedService>::NAME,
            <super::Routes as NamedService>::NAME
        );
    }
}
