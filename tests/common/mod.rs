//! Test harness: a real server on a real TCP port, over a fresh SQLite file or a fresh
//! PostgreSQL database per test, and a real gRPC client.
//!
//! PostgreSQL comes from `DATABASE_URL` (when it is a postgres:// URL) or
//! `postgres://postgres@127.0.0.1:5432/postgres`. A test that cannot reach it fails;
//! nothing is skipped.

#![allow(dead_code, unused_imports)]

pub mod app;
pub mod pg_cluster;

pub use app::TestApp;

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use chatroom::Config;
use chatroom::pb;
use chatroom::pb::chat_room_service_client::ChatRoomServiceClient;

/// Which store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn name(backend: Backend)` as two tests, `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

/// A database of its own for one test.
pub struct TestDb {
    pub url: String,
    backend: Backend,
    /// Keeps the SQLite directory alive; removed on drop.
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

fn postgres_admin_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => url,
        _ => "postgres://postgres@127.0.0.1:5432/postgres".to_string(),
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    }
}

async fn admin_connection() -> PgConnection {
    let url = postgres_admin_url();
    let options = PgConnectOptions::from_str(&url).expect("valid PostgreSQL URL");
    PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL tests need a server at {url} ({e}). Run scripts/test.sh, which \
             provisions one, or set DATABASE_URL to a postgres:// URL."
            )
        })
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("chatroom.db").display());
                TestDb {
                    url,
                    backend,
                    _dir: Some(dir),
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("chatroom_t_{}", uuid::Uuid::now_v7().simple());
                let mut admin = admin_connection().await;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut admin)
                    .await
                    .expect("create test database");
                TestDb {
                    url: with_database(&postgres_admin_url(), &name),
                    backend,
                    _dir: None,
                    pg_name: Some(name),
                }
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where the data is, to look for once the `TestDb` is gone.
    pub fn location(&self) -> DbLocation {
        match (&self._dir, &self.pg_name) {
            (Some(dir), _) => DbLocation::SqliteDir(dir.path().to_path_buf()),
            (None, Some(name)) => DbLocation::Postgres(name.clone()),
            (None, None) => panic!("a database the test did not create"),
        }
    }

    /// Drops a PostgreSQL test database now; nothing is left for `Drop` to do.
    pub async fn remove_now(&mut self) {
        if let Some(name) = self.pg_name.take() {
            drop_database(&name).await;
        }
    }
}

/// Where a [`TestDb`] keeps its data.
#[derive(Clone, Debug)]
pub enum DbLocation {
    /// The temporary directory of the SQLite file.
    SqliteDir(std::path::PathBuf),
    /// The name of the PostgreSQL database.
    Postgres(String),
}

impl DbLocation {
    pub async fn exists(&self) -> bool {
        match self {
            DbLocation::SqliteDir(dir) => dir.exists(),
            DbLocation::Postgres(name) => {
                let mut admin = admin_connection().await;
                let found: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
                        .bind(name)
                        .fetch_one(&mut admin)
                        .await
                        .expect("read pg_database");
                found > 0
            }
        }
    }
}

async fn drop_database(name: &str) {
    let mut admin = admin_connection().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop test database");
}

/// A PostgreSQL test database not removed yet is dropped here, also when the test
/// panicked: on a thread of its own with a runtime of its own, because the test's
/// runtime may be unwinding or shutting down, and `Drop` cannot await. `FORCE` ends
/// whatever connections a server that was only told to stop still holds.
impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database")
                .block_on(drop_database(&name));
        })
        .join();
        if dropped.is_err() {
            // The thread said why. Panicking again while unwinding would abort.
            if std::thread::panicking() {
                eprintln!("the test database was not dropped");
            } else {
                panic!("the test database was not dropped");
            }
        }
    }
}

/// A running server.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server over `db` with default limits, changed by `configure`.
    pub async fn start(db: &TestDb, configure: impl FnOnce(&mut Config)) -> TestServer {
        chatroom::init_telemetry("warn");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().unwrap();
        let mut config = Config::new(addr, db.url.clone());
        config.db_pool_size = 8;
        configure(&mut config);
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            chatroom::serve(config, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs and stops cleanly");
        });
        let server = TestServer {
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
        };
        server.wait_until_serving().await;
        server
    }

    /// A server running elsewhere (another process), once it serves.
    pub async fn external(addr: std::net::SocketAddr) -> TestServer {
        let server = TestServer {
            addr,
            shutdown: None,
            handle: None,
        };
        server.wait_until_serving().await;
        server
    }

    /// Waits until the gRPC port answers (migrations run before it is served).
    async fn wait_until_serving(&self) {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel().await);
        let deadline = tokio::time::Instant::now() + WAIT;
        // Each check is bounded too: until the server accepts, a connection only waits.
        while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
            let req = tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            };
            let check = tokio::time::timeout(left.min(Duration::from_secs(1)), health.check(req));
            if let Ok(Ok(r)) = check.await
                && r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                return;
            }
            // Polls: nothing announces that the port serves.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "server on {} did not become healthy within {WAIT:?}",
            self.addr
        );
    }

    /// A channel to the server; connects lazily and retries until the port is up.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_lazy()
    }

    /// A client acting as `user`.
    pub async fn client(&self, user: &str) -> Client {
        ChatRoomServiceClient::with_interceptor(self.channel().await, UserHeader::new(user))
    }

    /// A client acting as `user` whose HTTP/2 stream window is the protocol's default
    /// (64 KiB): a stream it does not read stops the server from sending on it once
    /// that much is in flight, so the server's side falls behind.
    pub fn small_window_client(&self, user: &str) -> Client {
        let channel = Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .initial_stream_window_size(65_535)
            .connect_lazy();
        ChatRoomServiceClient::with_interceptor(channel, UserHeader::new(user))
    }

    /// A client sending `authorization: Bearer <token>` with every call.
    pub fn token_client(&self, token: &str) -> Client {
        let channel = Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_lazy();
        ChatRoomServiceClient::with_interceptor(channel, UserHeader::bearer(token))
    }

    /// A client with no identity.
    pub async fn anonymous(&self) -> ChatRoomServiceClient<Channel> {
        ChatRoomServiceClient::new(self.channel().await)
    }

    /// Stops the server gracefully and waits until it has closed the database.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task");
        }
    }
}

/// The real `chatroom` binary serving `db` on a free port; killed if dropped while it
/// runs.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub server: TestServer,
}

impl ServerProcess {
    pub async fn start(db: &TestDb) -> ServerProcess {
        Self::start_with(db, &[]).await
    }

    /// The binary with `args` besides its address, database and log level.
    pub async fn start_with(db: &TestDb, args: &[&str]) -> ServerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatroom"))
            .args([
                "--listen",
                &addr.to_string(),
                "--database-url",
                &db.url,
                "--log",
                "warn",
            ])
            .args(args)
            .kill_on_drop(true)
            .spawn()
            .expect("start the chatroom binary");
        let server = TestServer::external(addr).await;
        ServerProcess { child, server }
    }

    /// Resident set size, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib / 1024.0
    }
}

/// The health status of `service` ("" for the whole server), as the server answers.
pub async fn health_status(server: &TestServer, service: &str) -> i32 {
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

/// A server dropped without [`TestServer::stop`] (the test panicked) is told to shut
/// down; its task ends with the runtime if it has not by then.
impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Adds `x-user-id` to every request.
/// The identity a test client sends with every call: `x-user-id` (`--auth header`),
/// or `authorization: Bearer <token>` (`--auth jwt`).
#[derive(Clone)]
pub struct UserHeader(&'static str, MetadataValue<Ascii>);

impl UserHeader {
    pub fn new(user: &str) -> Self {
        UserHeader("x-user-id", user.parse().expect("ASCII user id"))
    }

    /// `authorization: Bearer <token>`.
    pub fn bearer(token: &str) -> Self {
        UserHeader(
            "authorization",
            format!("Bearer {token}").parse().expect("an ASCII token"),
        )
    }
}

impl Interceptor for UserHeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(self.0, self.1.clone());
        Ok(request)
    }
}

pub type Client = ChatRoomServiceClient<InterceptedService<Channel, UserHeader>>;

/// Asserts `status` has `code` and an ErrorInfo with `reason` in domain `chatroom`.
#[track_caller]
pub fn assert_error(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "unexpected reason in {status:?}");
    assert_eq!(info.domain, "chatroom");
}

/// Asserts `status` is INVALID_ARGUMENT with a BadRequest violation naming `field`.
#[track_caller]
pub fn assert_bad_request(status: &Status, field: &str) {
    assert_error(status, Code::InvalidArgument, "INVALID_ARGUMENT");
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    assert!(
        bad.field_violations.iter().any(|v| v.field == field),
        "expected a violation of {field} in {status:?}"
    );
}

/// A CreateRoom request for `room_id` with defaults.
pub fn create(room_id: &str) -> pb::CreateRoomRequest {
    pb::CreateRoomRequest {
        room_id: room_id.into(),
        name: format!("room {room_id}"),
        ..Default::default()
    }
}

/// An EnterRoom request for `room_id` with defaults.
pub fn enter(room_id: &str) -> pb::EnterRoomRequest {
    pb::EnterRoomRequest {
        room_id: room_id.into(),
        name: format!("room {room_id}"),
        ..Default::default()
    }
}

pub fn leave(room_id: &str) -> pb::LeaveRoomRequest {
    pb::LeaveRoomRequest {
        room_id: room_id.into(),
    }
}

pub fn join(room_id: &str) -> pb::JoinRoomRequest {
    pb::JoinRoomRequest {
        room_id: room_id.into(),
        display_name: String::new(),
    }
}

pub async fn get_room(client: &mut Client, room_id: &str) -> Result<pb::Room, Status> {
    client
        .get_room(pb::GetRoomRequest {
            room_id: room_id.into(),
        })
        .await
        .map(|r| r.into_inner().room.expect("room"))
}

/// Every member of a room, across pages.
pub async fn all_members(client: &mut Client, room_id: &str) -> Vec<pb::Member> {
    let mut members = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_members(pb::ListMembersRequest {
                room_id: room_id.into(),
                online_only: false,
                page_size: 100,
                page_token: token,
            })
            .await
            .expect("list members")
            .into_inner();
        members.extend(page.members);
        if page.next_page_token.is_empty() {
            return members;
        }
        token = page.next_page_token;
    }
}

/// The user ids of every member of a room, in id order.
pub async fn member_ids(client: &Client, room_id: &str) -> Vec<String> {
    all_members(&mut client.clone(), room_id)
        .await
        .into_iter()
        .map(|m| m.user_id)
        .collect()
}

/// Runs `chatroom-bench` against `target` with `args` and returns its JSON report
/// (the last line), failing unless it exits 0.
pub async fn bench(target: &str, args: &[&str]) -> serde_json::Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatroom-bench"))
        .args(["--target", target, "--json"])
        .args(args)
        .output()
        .await
        .expect("run chatroom-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chatroom-bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().expect("a report")).expect("a JSON report")
}

/// How long a test waits for an expected frame or state before failing.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `value` until it equals `expected` (within [`WAIT`]); fails with `what`.
pub async fn eventually<T, F, Fut>(what: &str, expected: T, mut value: F)
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = value().await;
        if now == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {now:?}, expected {expected:?}"
        );
        // Polls: what is waited for has no event of its own.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `room_id` as `client` sees it until `field` of it equals `expected`.
pub async fn eventually_room<T>(
    client: &Client,
    room_id: &str,
    what: &str,
    expected: T,
    field: impl Fn(pb::Room) -> T,
) where
    T: PartialEq + std::fmt::Debug,
{
    eventually(what, expected, || {
        let mut client = client.clone();
        let field = &field;
        async move { field(get_room(&mut client, room_id).await.unwrap()) }
    })
    .await;
}

/// A duration of `ms` milliseconds, as the proto carries it.
pub fn millis(ms: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: ms / 1000,
        nanos: (ms % 1000) as i32 * 1_000_000,
    })
}

/// One Subscribe stream, driven by a test.
pub struct Sub {
    frames: Option<tokio::sync::mpsc::Sender<pb::SubscribeRequest>>,
    responses: tonic::Streaming<pb::SubscribeResponse>,
    stash: std::collections::VecDeque<pb::SubscribeResponse>,
    next_id: u64,
}

pub use pb::subscribe_response::Event as Ev;

impl Sub {
    /// A Sub over a stream the test opened itself.
    pub fn from_parts(
        frames: tokio::sync::mpsc::Sender<pb::SubscribeRequest>,
        responses: tonic::Streaming<pb::SubscribeResponse>,
    ) -> Sub {
        Sub {
            frames: Some(frames),
            responses,
            stash: Default::default(),
            next_id: 0,
        }
    }

    pub async fn open(client: &mut Client) -> Sub {
        let (frames, rx) = tokio::sync::mpsc::channel(1024);
        let opened = client.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx));
        let responses = tokio::time::timeout(WAIT, opened)
            .await
            .unwrap_or_else(|_| panic!("Subscribe did not answer within {WAIT:?}"))
            .expect("subscribe")
            .into_inner();
        Sub {
            frames: Some(frames),
            responses,
            stash: Default::default(),
            next_id: 0,
        }
    }

    /// Sends a frame; returns its request id.
    pub async fn request(&mut self, frame: pb::subscribe_request::Frame) -> String {
        self.try_request(frame).await.expect("stream open")
    }

    /// Sends a frame; `None` when the stream is closed.
    pub async fn try_request(&mut self, frame: pb::subscribe_request::Frame) -> Option<String> {
        self.next_id += 1;
        let request_id = format!("q{}", self.next_id);
        self.frames
            .as_ref()?
            .send(pb::SubscribeRequest {
                request_id: request_id.clone(),
                frame: Some(frame),
            })
            .await
            .ok()?;
        Some(request_id)
    }

    /// Sends a frame exactly as given.
    pub async fn frames_raw(&mut self, request: pb::SubscribeRequest) {
        let frames = self.frames.as_ref().expect("sending side open");
        frames.send(request).await.expect("stream open");
    }

    /// Closes the client's side of the stream (a half-close); events keep coming.
    pub fn close_sending(&mut self) {
        self.frames = None;
    }

    /// The next event, or `None` once the stream has ended (cleanly or not).
    pub async fn responses_message(&mut self) -> Option<Ev> {
        match tokio::time::timeout(WAIT, self.responses.message()).await {
            Ok(Ok(Some(r))) => r.event,
            Ok(Ok(None)) | Ok(Err(_)) => None,
            Err(_) => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The next frame from the server (stashed ones first).
    pub async fn next(&mut self) -> pb::SubscribeResponse {
        if let Some(r) = self.stash.pop_front() {
            return r;
        }
        self.read().await.expect("the stream ended")
    }

    /// The next frame or the stream's end, as the client library reports it.
    pub async fn responses_result(&mut self) -> Result<Option<pb::SubscribeResponse>, Status> {
        self.responses.message().await
    }

    /// The next frame straight from the wire; `None` when the stream ended cleanly.
    pub async fn read(&mut self) -> Option<pb::SubscribeResponse> {
        match tokio::time::timeout(WAIT, self.responses.message()).await {
            Ok(Ok(r)) => r,
            Ok(Err(status)) => panic!("stream failed: {status:?}"),
            Err(_) => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The stream's end: the status it ended with (UNAVAILABLE at shutdown).
    pub async fn end(&mut self) -> Status {
        loop {
            match tokio::time::timeout(WAIT, self.responses.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return Status::ok(""),
                Ok(Err(status)) => return status,
                Err(_) => panic!("the stream did not end within {WAIT:?}"),
            }
        }
    }

    /// The next event (the frame's payload).
    pub async fn event(&mut self) -> Ev {
        self.next().await.event.expect("an event")
    }

    /// The answer to `request_id`, keeping other frames for later.
    pub async fn reply(&mut self, request_id: &str) -> Ev {
        if let Some(i) = self.stash.iter().position(|r| r.request_id == request_id) {
            return self.stash.remove(i).unwrap().event.expect("an event");
        }
        loop {
            let r = self.read().await.expect("the stream ended");
            if r.request_id == request_id {
                return r.event.expect("an event");
            }
            self.stash.push_back(r);
        }
    }

    pub async fn attach(&mut self, room_id: &str, after_seq: Option<u64>) -> Ev {
        let id = self
            .request(pb::subscribe_request::Frame::Attach(pb::AttachRoom {
                room_id: room_id.into(),
                after_seq,
            }))
            .await;
        self.reply(&id).await
    }

    /// Attaches and asserts it worked.
    pub async fn attached(&mut self, room_id: &str, after_seq: Option<u64>) -> pb::Room {
        match self.attach(room_id, after_seq).await {
            Ev::Attached(a) => a.room.unwrap(),
            other => panic!("expected attached, got {other:?}"),
        }
    }

    pub async fn send(&mut self, request: pb::SendMessageRequest) -> Ev {
        let id = self
            .request(pb::subscribe_request::Frame::Send(request))
            .await;
        self.reply(&id).await
    }

    /// Pings and returns every frame that arrived before the pong.
    pub async fn until_pong(&mut self) -> Vec<Ev> {
        let id = self
            .request(pb::subscribe_request::Frame::Ping(pb::Ping {}))
            .await;
        let mut before = Vec::new();
        loop {
            let r = self.next().await;
            if r.request_id == id {
                assert!(matches!(r.event, Some(Ev::Pong(_))));
                return before;
            }
            before.push(r.event.expect("an event"));
        }
    }

    /// Reads until members leave an attached room; their user ids.
    pub async fn members_left(&mut self) -> Vec<String> {
        loop {
            if let Ev::MembersLeft(l) = self.event().await
                && !l.members.is_empty()
            {
                return l.members.into_iter().map(|m| m.user_id).collect();
            }
        }
    }

    /// Reads until a message with `seq` arrives; returns the seqs of every CHAT
    /// message read (in arrival order).
    pub async fn chat_seqs_until(&mut self, seq: u64) -> Vec<u64> {
        let mut seqs = Vec::new();
        loop {
            if let Ev::Message(m) = self.event().await
                && m.seq > 0
            {
                seqs.push(m.seq);
                if m.seq >= seq {
                    return seqs;
                }
            }
        }
    }
}

/// A CHAT message with `text`.
pub fn chat(room_id: &str, text: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        room_id: room_id.into(),
        text: text.into(),
        ..Default::default()
    }
}

/// Every stored message of a room, oldest first, across pages.
pub async fn history(client: &mut Client, room_id: &str) -> Vec<pb::Message> {
    let mut all: Vec<pb::Message> = Vec::new();
    loop {
        let after = all.last().map_or(0, |m| m.seq);
        let page = client
            .list_messages(pb::ListMessagesRequest {
                room_id: room_id.into(),
                after_seq: Some(after),
                before_seq: None,
                limit: 500,
            })
            .await
            .expect("list messages")
            .into_inner();
        all.extend(page.messages);
        if !page.has_more {
            return all;
        }
    }
}

impl TestDb {
    /// A database that exists already (a test's own PostgreSQL cluster); nothing is
    /// dropped afterwards.
    pub fn on(url: String) -> TestDb {
        TestDb {
            url,
            backend: Backend::Postgres,
            _dir: None,
            pg_name: None,
        }
    }
}
