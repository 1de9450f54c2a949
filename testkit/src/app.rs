//! `TestApp`: a server on port 0 over a fresh database, owned together so that a test
//! sets both up in one line and never tears them down by hand.
//!
//! Dropping a `TestApp` cleans up whichever way the test ends:
//! - when the test returns, the server is stopped gracefully (and must stop cleanly,
//!   as an explicit [`TestApp::stop`] demands), then the database is removed;
//! - when the test panics, the server is told to shut down and the database is
//!   dropped from a thread of its own (see [`TestDb`]'s `Drop`), since nothing can be
//!   awaited while the test's runtime unwinds.

use std::sync::Arc;

use tokio::runtime::{Handle, RuntimeFlavor};

use chatroom::Config;
use chatroom::pb;

use super::{Backend, Sub, TestDb, TestServer, chat, create, join, leave};

type Configure = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// A running server over a database of the test's own.
pub struct TestApp {
    db: TestDb,
    /// `None` between [`TestApp::stop_server`] and [`TestApp::start_again`].
    server: Option<TestServer>,
    /// Kept so that a restart runs with the same limits.
    configure: Configure,
}

impl TestApp {
    /// A server with default limits over a fresh database.
    pub async fn start(backend: Backend) -> TestApp {
        TestApp::with(backend, |_| {}).await
    }

    /// A server whose limits `configure` changes, over a fresh database.
    pub async fn with(
        backend: Backend,
        configure: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> TestApp {
        TestApp::over(TestDb::new(backend).await, configure).await
    }

    /// A server on `clock` (a test's own: [`crate::test_clock`]), its limits changed
    /// by `configure`, over a fresh database; a restart keeps the clock.
    pub async fn with_clock(
        backend: Backend,
        clock: &chatroom::domain::Clock,
        configure: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> TestApp {
        let clock = clock.clone();
        TestApp::with(backend, move |c| {
            c.clock = clock.clone();
            configure(c);
        })
        .await
    }

    /// A server over `db`, which the app owns from now on (a database the test needed
    /// before the server, or one another server used before).
    pub async fn over(
        db: TestDb,
        configure: impl Fn(&mut Config) + Send + Sync + 'static,
    ) -> TestApp {
        let mut app = TestApp {
            db,
            server: None,
            configure: Arc::new(configure),
        };
        app.start_again().await;
        app
    }

    pub fn db(&self) -> &TestDb {
        &self.db
    }

    /// The running server.
    pub fn server(&self) -> &TestServer {
        self.server
            .as_ref()
            .expect("the server is running (start_again after stop_server)")
    }

    /// Stops the server gracefully and waits until it has closed the database; the
    /// database stays, for [`TestApp::start_again`] or for the test to open itself.
    pub async fn stop_server(&mut self) {
        let server = self.server.take().expect("the server is running");
        server.stop().await;
    }

    /// Starts a new server (on a new port, with the same limits) over the same database.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "the server is running already");
        let configure = Arc::clone(&self.configure);
        self.server = Some(TestServer::start(&self.db, |c| configure(c)).await);
    }

    /// Stops the server gracefully and starts a new one over the same database.
    pub async fn restart(&mut self) {
        self.stop_server().await;
        self.start_again().await;
    }

    /// Stops the server gracefully and removes the database, at this point of the test.
    pub async fn stop(mut self) {
        if self.server.is_some() {
            self.stop_server().await;
        }
        self.db.remove_now().await;
    }
}

/// The running server, so that `app.client(..)`, `app.addr` and the setup helpers
/// below read as calls on the app.
impl std::ops::Deref for TestApp {
    type Target = TestServer;

    fn deref(&self) -> &TestServer {
        self.server()
    }
}

/// Setup steps the tests repeat, each as one user over a connection of its own (a
/// unary call's connection makes no difference to it).
impl TestServer {
    /// `user` creates `room_id` with defaults; the room as created.
    pub async fn create_room(&self, user: &str, room_id: &str) -> pb::Room {
        self.create_room_with(user, create(room_id)).await
    }

    /// `user` creates a room as `request` says; the room as created.
    pub async fn create_room_with(&self, user: &str, request: pb::CreateRoomRequest) -> pb::Room {
        let mut client = self.client(user).await;
        client
            .create_room(request)
            .await
            .unwrap_or_else(|s| panic!("{user} creates a room: {s:?}"))
            .into_inner()
            .room
            .expect("room")
    }

    /// `user` joins `room_id`; the room after the join.
    pub async fn join(&self, user: &str, room_id: &str) -> pb::Room {
        let mut client = self.client(user).await;
        client
            .join_room(join(room_id))
            .await
            .unwrap_or_else(|s| panic!("{user} joins {room_id}: {s:?}"))
            .into_inner()
            .room
            .expect("room")
    }

    /// `user` leaves `room_id`.
    pub async fn leave(&self, user: &str, room_id: &str) {
        let mut client = self.client(user).await;
        client
            .leave_room(leave(room_id))
            .await
            .unwrap_or_else(|s| panic!("{user} leaves {room_id}: {s:?}"));
    }

    /// `user` sends a CHAT message `text` to `room_id` (unary); the stored message.
    pub async fn send(&self, user: &str, room_id: &str, text: &str) -> pb::Message {
        let mut client = self.client(user).await;
        client
            .send_message(chat(room_id, text))
            .await
            .unwrap_or_else(|s| panic!("{user} sends to {room_id}: {s:?}"))
            .into_inner()
            .message
            .expect("message")
    }

    /// A Subscribe stream of `user`, attached to nothing yet.
    pub async fn subscribe(&self, user: &str) -> Sub {
        Sub::open(&mut self.client(user).await).await
    }

    /// A Subscribe stream of `user`, attached to `room_id` (live only).
    pub async fn attached(&self, user: &str, room_id: &str) -> Sub {
        let mut sub = self.subscribe(user).await;
        sub.attached(room_id, None).await;
        sub
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        // A test that returns gets the graceful stop it would have asked for, clean-stop
        // check included: blocking a worker is fine on the multi-thread runtimes the
        // tests use. A panicking test gets only the shutdown signal that `server`'s
        // own Drop sends: waiting on its runtime while it unwinds could hang.
        if std::thread::panicking() {
            return;
        }
        if let Ok(runtime) = Handle::try_current()
            && runtime.runtime_flavor() == RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(|| runtime.block_on(server.stop()));
        }
    }
}
