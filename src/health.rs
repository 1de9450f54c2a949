//! What the health service says, and who decides it: the watcher of the database
//! (and, in a cluster, of NATS), and the supervision of the two writer tasks (and of
//! a cluster node's relay, lease and repair tasks, on the same terms).
//!
//! Every change of state goes through one of two long-lived tasks (the membership
//! writer and the message writer, in `rooms/`). Should one of them die — a panic is a
//! bug, but a bug must not leave a server that answers health checks SERVING while
//! every join or send fails — the server says NOT_SERVING at once, drains (streams end
//! with UNAVAILABLE, calls in flight finish) and [`crate::serve`] returns an error, so
//! the process exits non-zero and its supervisor (systemd, Kubernetes) starts a fresh
//! one. Restarting the task in place was the alternative; it would hide the bug and
//! lose the batch it held without a trace outside the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::error::Error;
use crate::store::Store;

/// How often the health service checks that the database answers (also the longest
/// a ping may take; a database that stops answering is usually found sooner, by the
/// first call whose round trip outlives its deadline).
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The most often it checks, however short the bus's grace period.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How often it checks while the store fails calls at once (the database was found
/// unreachable): its ping is what lets calls through again.
const OUTAGE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// What ended the dependency watcher's wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Woke {
    /// Time for the next check.
    Check,
    /// A call found the database unreachable.
    Tripped,
    /// The server is stopping.
    Stop,
}

/// A writer task that ended before the server was told to stop.
#[derive(Debug, thiserror::Error)]
#[error("the {0} stopped unexpectedly; the server stopped with it")]
pub struct WriterDied(pub &'static str);

/// Sets the status of the chatroom service and of the server as a whole ("").
pub async fn set(reporter: &HealthReporter, status: ServingStatus) {
    reporter
        .set_service_status(crate::proto::SERVICE_NAME, status)
        .await;
    reporter.set_service_status("", status).await;
}

/// The bus a cluster node relays over, and how long it may be away before the node
/// says NOT_SERVING: while it is, delivery heals from the database (up to a repair
/// interval late), so a short blip is not worth taking the node out of rotation.
pub struct Bus {
    pub client: async_nats::Client,
    pub grace: Duration,
}

/// Keeps the health service's status in step with the database and, in a cluster,
/// the bus: NOT_SERVING while the database does not answer or the bus has been
/// unreachable for longer than its grace period, SERVING once both are back — until
/// the server stops, when it says NOT_SERVING for good (load balancers stop sending
/// while it drains).
pub async fn watch_dependencies(
    store: Store,
    bus: Option<Bus>,
    reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = Some(ServingStatus::Serving);
    let mut bus_away_since: Option<Instant> = None;
    let interval = match &bus {
        Some(bus) => CHECK_INTERVAL.min(bus.grace / 2).max(MIN_CHECK_INTERVAL),
        None => CHECK_INTERVAL,
    };
    loop {
        let wait = if store.is_unreachable() {
            OUTAGE_CHECK_INTERVAL.min(interval)
        } else {
            interval
        };
        let woke = tokio::select! {
            () = tokio::time::sleep(wait) => Woke::Check,
            () = store.found_unreachable() => Woke::Tripped,
            _ = stop.wait_for(|stop| *stop) => Woke::Stop,
        };
        if woke == Woke::Stop {
            set(&reporter, ServingStatus::NotServing).await;
            return;
        }
        // A call just found the database unreachable (it failed, or did not answer
        // within its deadline): NOT_SERVING now, not after a ping of its own times
        // out; the pings that follow say when it is back.
        let database = if woke == Woke::Tripped {
            Err(Error::Unavailable(
                "a call found the database unreachable".into(),
            ))
        } else {
            let ping = tokio::time::timeout(CHECK_INTERVAL, store.ping()).await;
            ping.unwrap_or_else(|_| Err(Error::Unavailable("ping timed out".into())))
        };
        let bus_ok = match &bus {
            None => true,
            Some(bus) => {
                if bus.client.connection_state() == async_nats::connection::State::Connected {
                    bus_away_since = None;
                    true
                } else {
                    let since = *bus_away_since.get_or_insert_with(Instant::now);
                    since.elapsed() < bus.grace
                }
            }
        };
        let status = match (&database, bus_ok) {
            (Ok(()), true) => ServingStatus::Serving,
            (Err(error), _) => {
                if last != Some(ServingStatus::NotServing) {
                    tracing::warn!(%error, "database unreachable; health is NOT_SERVING");
                }
                ServingStatus::NotServing
            }
            (Ok(()), false) => {
                if last != Some(ServingStatus::NotServing) {
                    tracing::warn!("NATS unreachable past its grace period; health is NOT_SERVING");
                }
                ServingStatus::NotServing
            }
        };
        if last != Some(status) && !*stop.borrow() {
            set(&reporter, status).await;
            last = Some(status);
        }
    }
}

/// Waits for every writer task (or other task the server cannot serve without) to
/// end. One that ends (or panics) before `stop` is set
/// makes health NOT_SERVING and sets `stop`, so the server drains and stops; the
/// result then names it. Writers end normally once the server stopped and dropped
/// their handles.
pub async fn watch_writers(
    writers: Vec<(&'static str, JoinHandle<()>)>,
    reporter: HealthReporter,
    stop: Arc<watch::Sender<bool>>,
) -> Result<(), WriterDied> {
    let mut running: FuturesUnordered<_> = writers
        .into_iter()
        .map(|(name, task)| async move { (name, task.await) })
        .collect();
    let mut died = None;
    while let Some((name, ended)) = running.next().await {
        let stopping = *stop.borrow();
        match ended {
            Ok(()) if stopping => continue,
            Ok(()) => tracing::error!(writer = name, "a writer task ended while serving"),
            Err(error) => tracing::error!(writer = name, %error, "a writer task failed"),
        }
        if died.is_none() {
            died = Some(WriterDied(name));
            set(&reporter, ServingStatus::NotServing).await;
            let _ = stop.send(true);
        }
    }
    died.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_server::Health;
    use tonic_health::server::HealthService;

    use super::*;

    async fn status(service: &HealthService) -> i32 {
        let request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        service.check(request).await.unwrap().into_inner().status
    }

    #[tokio::test]
    async fn a_writer_that_dies_stops_the_server_and_fails_it() {
        let (reporter, _) = tonic_health::server::health_reporter();
        let service = HealthService::from_health_reporter(reporter.clone());
        set(&reporter, ServingStatus::Serving).await;
        let (stop, mut stopped) = watch::channel(false);
        let stop = Arc::new(stop);
        let dying = tokio::spawn(async { panic!("a bug in a writer") });
        // The other writer ends as writers do: once the server has stopped.
        let mut told = stopped.clone();
        let healthy = tokio::spawn(async move {
            let _ = told.wait_for(|stop| *stop).await;
        });
        let writers = vec![("membership writer", dying), ("message writer", healthy)];
        let result = watch_writers(writers, reporter, stop).await;
        assert_eq!(result.unwrap_err().0, "membership writer");
        assert!(*stopped.borrow_and_update(), "the server was told to stop");
        assert_eq!(status(&service).await, ServingStatus::NotServing as i32);
    }

    #[tokio::test]
    async fn writers_that_end_after_the_stop_are_fine() {
        let (reporter, _) = tonic_health::server::health_reporter();
        let (stop, stopped) = watch::channel(false);
        let stop = Arc::new(stop);
        let writers = (0..2)
            .map(|_| {
                let mut told = stopped.clone();
                let task = tokio::spawn(async move {
                    let _ = told.wait_for(|stop| *stop).await;
                });
                ("writer", task)
            })
            .collect();
        let watching = tokio::spawn(watch_writers(writers, reporter, stop.clone()));
        stop.send(true).unwrap();
        assert!(watching.await.unwrap().is_ok());
    }
}
