//! The test harness itself: a `TestApp` leaves no server and no database behind,
//! whether its test returns or panics.

use chatroom_testkit as common;
use chatroom_testkit::on_both_stores;

use std::panic::AssertUnwindSafe;

use tonic::Code;

use common::{Backend, TestApp};

on_both_stores!(a_dropped_app_stops_its_server_and_removes_its_database);

/// Panicking tests run on runtimes of their own, as `#[tokio::test]` would, on a
/// thread of their own: one that hangs fails the test instead of the whole run.
mod panicking {
    use std::time::Duration;

    use super::Backend;

    /// Far more than a panicking test and its cleanup take (well under a second).
    const LIMIT: Duration = Duration::from_secs(60);

    fn within_limit(backend: Backend) {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let outcome =
                std::panic::catch_unwind(|| super::a_panicking_test_leaves_nothing_behind(backend));
            let _ = done.send(outcome);
        });
        match finished.recv_timeout(LIMIT) {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("a panicking test on {backend:?} and its cleanup took over {LIMIT:?}"),
        }
    }

    #[test]
    fn on_sqlite() {
        within_limit(Backend::Sqlite);
    }

    #[test]
    fn on_postgres() {
        within_limit(Backend::Postgres);
    }
}

async fn a_dropped_app_stops_its_server_and_removes_its_database(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.create_room("alice", "r").await;
    let mut sub = app.attached("alice", "r").await;
    let addr = app.addr;
    let location = app.db().location();
    assert!(location.exists().await);

    drop(app);
    // The graceful stop ended the stream as a shutdown does, and closed the port.
    assert_eq!(sub.end().await.code(), Code::Unavailable);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "{addr} still accepts connections"
    );
    assert!(!location.exists().await, "{location:?} is still there");
}

/// A test body that panics while its server holds database connections and a stream:
/// its database is gone once the panic has unwound out of the runtime.
fn a_panicking_test_leaves_nothing_behind(backend: Backend) {
    let (tx, rx) = std::sync::mpsc::channel();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let failed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async {
            let app = TestApp::start(backend).await;
            tx.send(app.db().location()).unwrap();
            app.create_room("alice", "r").await;
            let _sub = app.attached("alice", "r").await;
            panic!("a failing test, on purpose");
        })
    }));
    assert!(failed.is_err(), "the test body panicked");
    drop(runtime);

    let location = rx.recv().expect("the app said where its database is");
    let check = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(
        !check.block_on(location.exists()),
        "{location:?} outlived the panic"
    );
}
