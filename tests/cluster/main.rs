//! Several nodes over one PostgreSQL database and one NATS behave as one service: a
//! message sent through any node reaches the streams attached on every node, in seq
//! order, exactly once — also while the bus loses messages; room events, presence,
//! timers and limits hold across nodes. Each test runs its nodes in process, on port
//! 0 (or as a process of the real binary, to be killed), and a nats-server of its own
//! on a free port. One test binary, a module per concern.

use chatroom_testkit as common;

mod admins;
mod bus;
mod deploy;
mod events;
mod feed;
mod hang;
mod limits;
mod messages;
mod presence;
mod timers;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatroom::Config;
use common::{Backend, Ev, Sub, TestDb, TestServer, join};

/// A nats-server process of the test's own, killed on drop.
struct Nats {
    port: u16,
    child: Option<Child>,
    /// The configuration file it was started with, if any.
    config: Option<std::path::PathBuf>,
}

impl Nats {
    fn start() -> Nats {
        let port = common::free_port();
        let mut nats = Nats {
            port,
            child: None,
            config: None,
        };
        nats.start_again();
        nats
    }

    /// A nats-server started with the configuration file `config` (to require
    /// credentials or TLS), on a free port of its own.
    fn start_with(config: std::path::PathBuf) -> Nats {
        let port = common::free_port();
        let mut nats = Nats {
            port,
            child: None,
            config: Some(config),
        };
        nats.start_again();
        nats
    }

    /// Starts the server (again) on its port, and waits until it accepts.
    fn start_again(&mut self) {
        assert!(self.child.is_none(), "nats-server is running already");
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let mut command = Command::new(binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cluster tests need nats-server ({e}); scripts/test.sh installs it")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long the test nodes' leases last: a killed node counts dead this long after.
const LEASE_MS: u64 = 900;
/// How long the bus may be away before the test nodes' health says NOT_SERVING.
const NATS_GRACE_MS: u64 = 500;

/// Two nodes over a fresh PostgreSQL database and a nats-server of their own, each
/// checking its rooms against the store every `repair_ms`.
struct Cluster {
    a: TestServer,
    b: TestServer,
    nats: Nats,
    db: TestDb,
    repair_ms: u64,
}

impl Cluster {
    async fn start(repair_ms: u64) -> Cluster {
        Cluster::start_with(repair_ms, |_| {}).await
    }

    /// Two nodes as [`Cluster::start`] makes them, each configured by `configure` too.
    async fn start_with(repair_ms: u64, configure: impl Fn(&mut Config)) -> Cluster {
        let db = TestDb::new(Backend::Postgres).await;
        let nats = Nats::start();
        let a = node_with(&db, &nats, repair_ms, &configure).await;
        let b = node_with(&db, &nats, repair_ms, &configure).await;
        Cluster {
            a,
            b,
            nats,
            db,
            repair_ms,
        }
    }

    /// One more node, in process, on the same database and bus.
    async fn add_node(&self) -> TestServer {
        node(&self.db, &self.nats, self.repair_ms).await
    }

    /// One more node as a process of the real binary, to be killed.
    async fn add_process(&self) -> common::ServerProcess {
        let (lease, repair) = (LEASE_MS.to_string(), self.repair_ms.to_string());
        common::ServerProcess::start_with(
            &self.db,
            &[
                "--nats-url",
                &self.nats.url(),
                "--node-lease-ms",
                &lease,
                "--cluster-repair-interval-ms",
                &repair,
            ],
        )
        .await
    }

    /// Stops both nodes gracefully, then drops the database.
    async fn stop(self) {
        let Cluster {
            a, b, nats, mut db, ..
        } = self;
        a.stop().await;
        b.stop().await;
        drop(nats);
        db.remove_now().await;
    }
}

/// A node in process, on `db` and `nats`.
async fn node(db: &TestDb, nats: &Nats, repair_ms: u64) -> TestServer {
    node_with(db, nats, repair_ms, |_| {}).await
}

/// A node in process, on `db` and `nats`, configured by `configure` too.
async fn node_with(
    db: &TestDb,
    nats: &Nats,
    repair_ms: u64,
    configure: impl Fn(&mut Config),
) -> TestServer {
    let url = nats.url();
    TestServer::start(db, move |c| {
        c.nats_url = Some(url);
        c.cluster_repair_interval_ms = repair_ms;
        c.node_lease_ms = LEASE_MS;
        c.nats_grace_ms = NATS_GRACE_MS;
        configure(c);
    })
    .await
}

/// A member `user` of "r" with a stream attached to it through `node`.
async fn attached(node: &TestServer, user: &str) -> Sub {
    let mut client = node.client(user).await;
    client.join_room(join("r")).await.unwrap();
    let mut sub = Sub::open(&mut client).await;
    sub.attached("r", None).await;
    sub
}

/// The next event of `sub` that is not a message or a member event (those may come
/// in between, in any number).
async fn next_room_event(sub: &mut Sub) -> Ev {
    loop {
        match sub.event().await {
            Ev::Message(_) | Ev::MembersJoined(_) | Ev::MembersLeft(_) => continue,
            other => return other,
        }
    }
}
