//! The standard services beside the chatroom one: health and server reflection.

mod common;

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
