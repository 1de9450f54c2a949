//! Spans: every call and every Subscribe stream runs in a span that carries its user
//! (and the call's room), seen in the JSON log lines and, with `--otlp-endpoint`,
//! received by an OpenTelemetry collector — here a real OTLP/gRPC receiver the test
//! runs, fed by the server binary.

use chatroom_testkit as common;

use std::net::SocketAddr;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use common::{Backend, Sub, TestDb, TestServer, chat, create};

/// Starts the server binary over `db` with `args`, its stdout piped.
fn start(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> (tokio::process::Child, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatroom"));
    command
        .args(["--listen", &addr.to_string(), "--database-url", &db.url])
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    (command.spawn().expect("start the chatroom binary"), addr)
}

/// Creates room `r` as alice, sends to it, and attaches it on a stream.
async fn traffic(addr: SocketAddr) {
    let server = TestServer::external(addr).await;
    let mut alice = server.client("alice").await;
    alice.create_room(create("r")).await.unwrap();
    alice.send_message(chat("r", "hello")).await.unwrap();
    let mut sub = Sub::open(&mut alice).await;
    sub.attached("r", Some(0)).await;
    assert_eq!(sub.chat_seqs_until(1).await, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_the_call_and_stream_spans() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (mut child, addr) = start(
        &db,
        &["--log", "info,chatroom=debug", "--log-format", "json"],
        &[],
    );
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    traffic(addr).await;
    // Every call logs `answered` (at DEBUG) in its span; the stream logs `attached`.
    let (mut send, mut attach) = (None, None);
    tokio::time::timeout(common::WAIT, async {
        while send.is_none() || attach.is_none() {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the server's output ended");
            let event: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            let span = &event["span"];
            match event["fields"]["message"].as_str() {
                Some("answered") if span["method"] == "SendMessage" => send = Some(event),
                Some("attached") if span["name"] == "stream" => attach = Some(event),
                _ => {}
            }
        }
    })
    .await
    .expect("the answered and attached lines");
    let send = send.unwrap();
    assert_eq!(send["span"]["name"], "rpc", "{send}");
    assert_eq!(send["span"]["user_id"], "alice", "{send}");
    assert_eq!(send["span"]["room_id"], "r", "{send}");
    assert_eq!(send["fields"]["code"], 0, "{send}");
    let attach = attach.unwrap();
    assert_eq!(attach["span"]["user_id"], "alice", "{attach}");
    assert_eq!(attach["fields"]["room_id"], "r", "{attach}");
    assert_eq!(attach["fields"]["truncated"], false, "{attach}");
    child.kill().await.unwrap();
}

/// An OTLP/gRPC trace receiver: passes on every export it is sent.
struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match &kv.value {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => Some(s.clone()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let (exports, mut received) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(exports)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let db = TestDb::new(Backend::Sqlite).await;
    let endpoint = format!("http://{collector_addr}");
    let (mut child, addr) = start(
        &db,
        // `--log warn`: the export has its own filter and still gets every span.
        &["--log", "warn", "--otlp-endpoint", &endpoint],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    traffic(addr).await;

    let mut names = Vec::new();
    let found = tokio::time::timeout(common::WAIT, async {
        loop {
            let export = received.recv().await.expect("the collector runs");
            for resource_spans in export.resource_spans {
                let resource = resource_spans.resource.unwrap_or_default();
                for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                    names.push(span.name.clone());
                    if span.name == "SendMessage" {
                        return (resource, span);
                    }
                }
            }
        }
    })
    .await;
    let (resource, span) = found.unwrap_or_else(|_| panic!("no SendMessage span; got {names:?}"));
    assert_eq!(
        text(&resource.attributes, "service.name").as_deref(),
        Some("chatroom")
    );
    assert_eq!(text(&span.attributes, "user_id").as_deref(), Some("alice"));
    assert_eq!(text(&span.attributes, "room_id").as_deref(), Some("r"));
    assert!(
        span.end_time_unix_nano > span.start_time_unix_nano,
        "{span:?}"
    );
    assert!(names.iter().any(|n| n == "CreateRoom"), "{names:?}");
    child.kill().await.unwrap();
}
