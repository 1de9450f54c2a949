//! The standard services beside the chatroom one: health and server reflection.

use chatroom_testkit as common;
use chatroom_testkit::on_both_stores;

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;

use common::{Backend, TestApp, TestDb, health_status};

on_both_stores!(
    health_is_serving,
    reflection_v1_and_v1alpha_list_and_describe
);

const SERVICE: &str = "chatroom.v1.ChatRoomService";

async fn health_is_serving(backend: Backend) {
    let app = TestApp::start(backend).await;
    assert_eq!(health_status(&app, "").await, ServingStatus::Serving as i32);
    assert_eq!(
        health_status(&app, SERVICE).await,
        ServingStatus::Serving as i32
    );
}

async fn reflection_v1_and_v1alpha_list_and_describe(backend: Backend) {
    let app = TestApp::start(backend).await;

    // v1
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

        let mut client = ServerReflectionClient::new(app.channel().await);
        let ask = |m| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        };
        let requests = tokio_stream::iter(vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(SERVICE.into())),
        ]);
        let responses: Vec<ServerReflectionResponse> = client
            .server_reflection_info(requests)
            .await
            .unwrap()
            .into_inner()
            .map(|r| r.unwrap())
            .collect()
            .await;
        let Some(MessageResponse::ListServicesResponse(list)) = &responses[0].message_response
        else {
            panic!("expected a service list, got {:?}", responses[0]);
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&SERVICE), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
        let Some(MessageResponse::FileDescriptorResponse(files)) = &responses[1].message_response
        else {
            panic!("expected file descriptors, got {:?}", responses[1]);
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }

    // v1alpha, which grpcurl and older tools use.
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

        let mut client = ServerReflectionClient::new(app.channel().await);
        let requests = tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]);
        let mut responses = client
            .server_reflection_info(requests)
            .await
            .unwrap()
            .into_inner();
        let first = responses.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("expected a service list");
        };
        assert!(list.service.iter().any(|s| s.name == SERVICE));
    }
}

/// A TCP forwarder to PostgreSQL that the test can cut, making the database
/// unreachable from the server's point of view without touching the real server.
struct Proxy {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String, listener: Option<TcpListener>) -> Proxy {
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            // Dropping `conns` (on abort) cuts every forwarded connection.
        });
        Proxy { addr, task }
    }

    /// Stops listening and cuts every connection.
    fn cut(self) -> std::net::SocketAddr {
        self.task.abort();
        self.addr
    }
}

/// Health turns NOT_SERVING while PostgreSQL is unreachable and SERVING once it is
/// back. (SQLite is embedded in the process, so it cannot become unreachable.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_health_follows_the_database() {
    let db = TestDb::new(Backend::Postgres).await;
    let url = db.url.clone();
    // postgres://user@host:port/name → route host:port through the proxy.
    let after_at = url.split_once('@').unwrap().1;
    let (host_port, rest) = after_at.split_once('/').unwrap();
    let proxy = Proxy::start(host_port.to_string(), None).await;
    let proxied = format!("{}@{}/{}", url.split_once('@').unwrap().0, proxy.addr, rest);

    let app = TestApp::over(db, move |c| c.database_url = proxied.clone()).await;
    assert_eq!(
        health_status(&app, SERVICE).await,
        ServingStatus::Serving as i32
    );

    let addr = proxy.cut();
    common::eventually(
        "health NotServing",
        ServingStatus::NotServing as i32,
        || health_status(&app, SERVICE),
    )
    .await;
    assert_eq!(
        health_status(&app, "").await,
        ServingStatus::NotServing as i32
    );
    // Calls that need the database fail with UNAVAILABLE meanwhile.
    let mut alice = app.client("alice").await;
    let err = alice.create_room(common::create("r")).await.unwrap_err();
    common::assert_error(&err, tonic::Code::Unavailable, "STORE_UNAVAILABLE");

    // Bring the route back on the same port.
    let listener = TcpListener::bind(addr).await.expect("rebind proxy port");
    let proxy = Proxy::start(host_port.to_string(), Some(listener)).await;
    common::eventually("health Serving", ServingStatus::Serving as i32, || {
        health_status(&app, SERVICE)
    })
    .await;
    alice
        .create_room(common::create("r"))
        .await
        .expect("works again");

    app.stop().await;
    proxy.cut();
}

/// `--log-format json`: one JSON object per line, with the event's fields; `RUST_LOG`
/// overrides `--log`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_when_asked() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let db = TestDb::new(Backend::Sqlite).await;
    let start = |rust_log: Option<&str>| {
        let port = common::free_port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatroom"));
        command
            .args(["--listen", &addr.to_string(), "--database-url", &db.url])
            .args(["--log", "info", "--log-format", "json"])
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        (command.spawn().expect("start the chatroom binary"), addr)
    };

    let (mut child, addr) = start(None);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let serving = tokio::time::timeout(common::WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let event: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if event["fields"]["message"] == "chatroom serving" {
                return event;
            }
        }
        panic!("the server ended without logging that it serves");
    })
    .await
    .expect("the serving line");
    assert_eq!(serving["level"], "INFO", "{serving}");
    assert_eq!(serving["fields"]["dialect"], "sqlite", "{serving}");
    assert_eq!(serving["fields"]["addr"], addr.to_string(), "{serving}");
    assert!(serving["timestamp"].is_string(), "{serving}");
    child.kill().await.unwrap();

    // RUST_LOG=warn: the info lines are not written.
    let (mut child, addr) = start(Some("warn"));
    let server = common::TestServer::external(addr).await;
    drop(server);
    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains("chatroom serving"), "{text}");
}

/// The value of the sample `name` whose labels include `labels`, in Prometheus text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let has = |(k, v): &(&str, &str)| {
                series_labels
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            };
            (series_name == name && labels.iter().all(has)).then(|| value.parse().ok())?
        })
}

/// Every metric family named in `text` (Prometheus text), by its `# TYPE` line, with
/// its type.
fn families(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// Every string under a key `expr` or `query` in the dashboard's JSON.
fn queries(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value {
                    serde_json::Value::String(q) if key == "expr" || key == "query" => {
                        found.push(q.clone());
                    }
                    other => queries(other, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, found)),
        _ => {}
    }
}

/// The Grafana dashboard (`deploy/grafana/chatroom.json`) queries only metrics the
/// server exports, and shows every family it exports; and every family is exported
/// from the start, at zero, before anything has moved it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_every_exported_metric_from_the_start() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new(Backend::Sqlite).await;
    let metrics_addr = format!("127.0.0.1:{}", common::free_port());
    let _process =
        common::ServerProcess::start_with(&db, &["--metrics-listen", &metrics_addr]).await;
    let url = format!("http://{metrics_addr}/metrics");
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let exported = families(&text);
    assert!(exported.len() >= 17, "every family at the start:\n{text}");
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            sample(&text, name, labels),
            Some(0.0),
            "{name} {labels:?}:\n{text}"
        );
    };
    zero(
        "chatroom_rpcs_total",
        &[("method", "SendMessage"), ("code", "OK")],
    );
    zero("chatroom_messages_delivered_total", &[]);
    zero("chatroom_bus_messages_total", &[("direction", "refused")]);
    zero("chatroom_bus_gaps_total", &[]);
    zero(
        "chatroom_writer_commit_seconds_count",
        &[("writer", "membership")],
    );
    zero(
        "chatroom_writer_batch_size_count",
        &[("writer", "messages")],
    );
    zero("chatroom_rpc_seconds_count", &[("method", "Subscribe")]);

    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../deploy/grafana/chatroom.json")).unwrap();
    let mut found = Vec::new();
    queries(&dashboard, &mut found);
    assert!(found.len() > 20, "{found:?}");
    let mut shown = std::collections::BTreeSet::new();
    for query in &found {
        let names = query
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("chatroom_"));
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (exported.get(base)? == "histogram").then_some(base)
                })
                .unwrap_or(name);
            assert!(
                exported.contains_key(family),
                "the dashboard queries {name}, which the server does not export: {query}"
            );
            shown.insert(family.to_string());
        }
    }
    let missing: Vec<_> = exported.keys().filter(|f| !shown.contains(*f)).collect();
    assert!(missing.is_empty(), "exported but on no panel: {missing:?}");
}

/// `--metrics-listen`: scrape, act, scrape — the counters and gauges move with the
/// traffic, by method and code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    // reqwest's rustls takes the process's crypto provider (the server installs ring).
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new(Backend::Sqlite).await;
    let metrics_addr = {
        let port = common::free_port();
        format!("127.0.0.1:{port}")
    };
    let process =
        common::ServerProcess::start_with(&db, &["--metrics-listen", &metrics_addr]).await;
    let scrape = || {
        let url = format!("http://{metrics_addr}/metrics");
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let before = scrape().await;
    assert_eq!(
        sample(&before, "chatroom_rpcs_total", &[("method", "CreateRoom")]),
        Some(0.0),
        "no call yet, and the series is there at zero: {before}"
    );

    let server = &process.server;
    let mut alice = server.client("alice").await;
    alice.create_room(common::create("r")).await.unwrap();
    let mut sub = server.attached("alice", "r").await;
    for i in 0..3 {
        alice
            .send_message(common::chat("r", &format!("m{i}")))
            .await
            .unwrap();
    }
    assert_eq!(sub.chat_seqs_until(3).await, [1, 2, 3]);
    // Many more reads at once than SQLite's four reader connections: some wait.
    let reads = (0..100).map(|_| {
        let mut alice = alice.clone();
        async move { common::history(&mut alice, "r").await.len() }
    });
    assert!(
        futures_util::future::join_all(reads)
            .await
            .iter()
            .all(|n| *n == 3)
    );
    let bad = alice
        .create_room(common::create("no spaces"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let after = scrape().await;
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{after}"))
    };
    let create_ok = [("method", "CreateRoom"), ("code", "OK")];
    assert_eq!(value("chatroom_rpcs_total", &create_ok), 1.0);
    let create_bad = [("method", "CreateRoom"), ("code", "INVALID_ARGUMENT")];
    assert_eq!(value("chatroom_rpcs_total", &create_bad), 1.0);
    let sends = [("method", "SendMessage"), ("code", "OK")];
    assert_eq!(value("chatroom_rpcs_total", &sends), 3.0);
    assert_eq!(
        value(
            "chatroom_rpcs_total",
            &[("method", "Subscribe"), ("code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        value("chatroom_rpc_seconds_count", &[("method", "SendMessage")]),
        3.0
    );
    assert_eq!(value("chatroom_messages_stored_total", &[]), 3.0);
    let waits = value("chatroom_db_waits_total", &[]);
    assert!(waits >= 1.0, "{waits}");
    assert_eq!(value("chatroom_db_wait_seconds_count", &[]), waits);
    assert!(value("chatroom_messages_delivered_total", &[]) >= 3.0);
    assert_eq!(value("chatroom_streams_open", &[]), 1.0);
    let message_batches = value(
        "chatroom_writer_batch_size_count",
        &[("writer", "messages")],
    );
    assert!((1.0..=3.0).contains(&message_batches), "{message_batches}");
    assert!(
        value(
            "chatroom_writer_batch_size_count",
            &[("writer", "membership")]
        ) >= 1.0
    );
    assert!(
        value(
            "chatroom_writer_commit_seconds_count",
            &[("writer", "messages")]
        ) >= 1.0
    );
    // Sampled every second.
    common::eventually("one live room", Some(1.0), || async {
        sample(&scrape().await, "chatroom_rooms_live", &[])
    })
    .await;
    let connections = value("chatroom_db_connections", &[("state", "idle")])
        + value("chatroom_db_connections", &[("state", "in_use")]);
    assert!(
        connections >= 1.0,
        "the pools hold connections: {connections}"
    );

    // The stream ends: the gauge follows.
    drop(sub);
    common::eventually("no stream open", Some(0.0), || async {
        sample(&scrape().await, "chatroom_streams_open", &[])
    })
    .await;
}
