//! Spans and metrics for every call of the service, as one tower layer.
//!
//! Each call gets a span named for its method; the handlers record the caller and the
//! room into it (`ChatRoomApi::caller`, `super::in_room`), so everything logged while
//! it runs carries them. When the answer is made, its code and latency go to the
//! metrics and the span. A unary call's answer is made once its handler is done; a
//! stream's once it is open (what follows is the stream's own span).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::Body;
use tonic::server::NamedService;
use tower_layer::Layer;
use tracing::Instrument;

/// The layer: wraps a service in [`Metered`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MeteredLayer;

impl<S> Layer<S> for MeteredLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner }
    }
}

/// A service whose every call is spanned and metered.
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
}

impl<S: NamedService> NamedService for Metered<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower_service::Service<http::Request<Body>> for Metered<S>
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = method_name(request.uri().path());
        let started = Instant::now();
        let span = tracing::info_span!(
            "rpc",
            otel.name = method,
            method,
            user_id = tracing::field::Empty,
            room_id = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        // The inner call starts inside the span: a handler that runs before its
        // future is first polled records into it too.
        let call = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = call.await?;
                Ok(metered(method, started, response))
            }
            .instrument(span),
        )
    }
}

/// The contract's RPC names, read once from its descriptor set (so a new RPC is
/// named in the metrics without a list to keep in step), kept for the process's life.
static METHODS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    use prost::Message as _;
    let files = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set built into the binary decodes");
    files
        .file
        .into_iter()
        .flat_map(|f| f.service)
        .filter(|s| s.name() == "ChatRoomService")
        .flat_map(|s| s.method)
        .map(|m| &*Box::leak(m.name().to_string().into_boxed_str()))
        .collect()
});

/// The contract's RPC names, as the call metrics label them.
pub fn methods() -> &'static [&'static str] {
    &METHODS
}

/// The method a path calls, as the metrics name it ("unknown" for no RPC of the
/// contract, so that a client cannot make up label values).
fn method_name(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("unknown")
}

/// Records a call answered with `response`: its code is the `grpc-status` of a
/// trailers-only answer (an error), else OK.
fn metered(
    method: &'static str,
    started: Instant,
    response: http::Response<Body>,
) -> http::Response<Body> {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
    let elapsed = started.elapsed();
    crate::telemetry::rpc(method, code, elapsed);
    tracing::Span::current().record("code", code as i32);
    tracing::debug!(
        code = code as i32,
        elapsed_us = elapsed.as_micros() as u64,
        "answered"
    );
    response
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    /// Every RPC of the contract is named in the metrics by its own name, and
    /// nothing else is.
    #[test]
    fn every_method_of_the_contract_has_a_metrics_name() {
        let files =
            prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let service = files
            .file
            .iter()
            .flat_map(|f| &f.service)
            .find(|s| s.name() == "ChatRoomService")
            .expect("the service");
        assert!(service.method.len() >= 14);
        for method in &service.method {
            let path = format!("/chatroom.v1.ChatRoomService/{}", method.name());
            assert_eq!(super::method_name(&path), method.name());
        }
        assert_eq!(
            super::method_name("/chatroom.v1.ChatRoomService/Nope"),
            "unknown"
        );
    }
}
