//! Test harness: a real server on a real TCP port, over a fresh SQLite file or a fresh
//! PostgreSQL database per test, and a real gRPC client.
//!
//! PostgreSQL comes from `DATABASE_URL` (when it is a postgres:// URL) or
//! `postgres://postgres@127.0.0.1:5432/postgres`. A test that cannot reach it fails;
//! nothing is skipped.
//!
//! A crate of its own, so that it is compiled once for every test binary of the
//! service (each used to compile it again through `#[path]`). A test binary names it
//! `common` (`use chatroom_testkit as common;`) and runs each store test on both
//! stores with [`on_both_stores!`].

pub mod app;
pub mod calls;
pub mod certs;
pub mod pg_cluster;
pub mod sub;
pub mod watch;

pub use app::TestApp;
pub use calls::*;
pub use sub::{Ev, Sub};
pub use watch::{Seen, Watch, seen, seen_all};

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
use tonic::{Request, Status};

use chatroom::Config;
use chatroom::pb::chat_room_service_client::ChatRoomServiceClient;

/// The path of one of the service's binaries (`chatroom`, `chatroom-bench`), built
/// beside the test binary running now: cargo builds a package's binaries before its
/// integration tests, into the directory above theirs (`target/<profile>/`).
pub fn binary(name: &str) -> std::path::PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    let deps = test.parent().expect("the test binary's directory");
    let profile = deps.parent().expect("the target profile directory");
    let path = profile.join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with cargo test, which builds it",
        path.display()
    );
    path
}

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
                    super::$name($crate::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await
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

    /// Runs `sql` on the database directly, behind the servers' backs (what another
    /// process, or a lost event, would leave).
    pub async fn execute(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self.backend {
            Backend::Postgres => {
                let mut connection = PgConnection::connect(&self.url).await.expect("connect");
                sqlx::raw_sql(sql)
                    .execute(&mut connection)
                    .await
                    .expect("execute");
            }
            Backend::Sqlite => {
                let mut connection = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::raw_sql(sql)
                    .execute(&mut connection)
                    .await
                    .expect("execute");
            }
        }
    }

    /// Runs `sql`, a query of one integer (`SELECT COUNT(*) …`), on the database
    /// directly: what is stored, not what the server answers.
    pub async fn count(&self, sql: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self.backend {
            Backend::Postgres => {
                let mut connection = PgConnection::connect(&self.url).await.expect("connect");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut connection)
                    .await
                    .expect("count")
            }
            Backend::Sqlite => {
                let mut connection = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut connection)
                    .await
                    .expect("count")
            }
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
        let _ = chatroom::telemetry::init("warn", chatroom::config::LogFormat::Text, None);
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
        let port = free_port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = tokio::process::Command::new(binary("chatroom"))
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

/// A port free on 127.0.0.1 now (the OS's pick, for the caller to bind next;
/// between the two another process could take it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
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
