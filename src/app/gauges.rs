//! Gauges: what is a level rather than an event (live rooms, database connections),
//! sampled for the metrics while `--metrics-listen` serves them. Here, not in
//! `telemetry`, because sampling reads the store and the hubs, which themselves
//! report to `telemetry`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{live, store, telemetry};

/// Samples what is a level rather than an event (live rooms, database connections)
/// for the metrics, every second, until the server stops.
pub(super) async fn sample(
    store: store::Store,
    hubs: Arc<live::Hubs>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (in_use, idle) = store.connections();
        telemetry::db_connections(in_use, idle);
        telemetry::rooms_live(hubs.live_room_count());
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
