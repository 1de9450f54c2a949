//! What the service tells its operator: logs (text or JSON lines), spans (a span per
//! call and per Subscribe stream carrying its user and room, in the logs and, with
//! `--otlp-endpoint`, exported over OTLP) and Prometheus metrics
//! (`--metrics-listen ADDR` serves `/metrics`, off by default).
//!
//! Every metric is named and labelled here, once, behind a function per thing
//! observed, so the layers that observe (the API, the writers, the fan-out, the
//! relay) say what happened and never how it is exported. Without `--metrics-listen`
//! no recorder is installed and each call is a load of the global recorder and
//! nothing else. Per-delivery work is kept off the fan-out's path: a published
//! message counts its receivers once, not once per stream.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::config::LogFormat;
use crate::error::{Error, Result};

/// What [`init`] set up that must be flushed before the process exits.
#[must_use = "call `shutdown` before exiting, or the last spans are not exported"]
pub struct Telemetry {
    spans: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans not sent yet (waiting at most a few seconds for the
    /// collector) and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.spans {
            let flushed = tokio::task::spawn_blocking(move || {
                provider.shutdown_with_timeout(Duration::from_secs(5))
            })
            .await;
            if let Ok(Err(error)) = flushed {
                eprintln!("exporting the last spans failed: {error}");
            }
        }
    }
}

/// Sets up logging once, from the configured filter (`RUST_LOG` wins when set), and,
/// with an `otlp_endpoint`, the export of spans to an OpenTelemetry collector over
/// OTLP/gRPC. The export has its own filter (every `chatroom` span and event at DEBUG
/// and above: the calls' spans and the streams'), so `--log warn` quiets the log
/// without emptying the traces. Must run within the
/// Tokio runtime (the exporter's client lives there).
pub fn init(filter: &str, format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Telemetry> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .boxed(),
    }
    .with_filter(filter);
    let (spans, provider) = match otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry::trace::TracerProvider as _;
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| Error::invalid("otlp_endpoint", e.to_string()))?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("chatroom")
                        .build(),
                )
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("chatroom"))
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("chatroom", tracing::Level::DEBUG),
                );
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    // A second call (tests start several servers in one process) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Ok(Telemetry { spans: provider })
}

/// Serves `/metrics` on `addr` from now on, every family at zero until it moves
/// (`methods`: the RPCs the call metrics are labelled with). Fails when the address
/// cannot be bound or a recorder is installed already (one per process).
pub fn serve_metrics(addr: SocketAddr, methods: &[&'static str]) -> Result<()> {
    const LATENCY: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            LATENCY,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_size".into()),
                SIZES,
            )
        })
        .and_then(|b| b.install())
        .map_err(|e| Error::invalid("metrics_listen", e.to_string()))?;
    describe();
    start_at_zero(methods);
    Ok(())
}

/// Registers every family with the label values it is known to take, at zero. The
/// exporter writes a series only once it is registered, and a dashboard or an alert
/// on a series that does not exist yet (no call refused, no bus event on this node)
/// sees no data instead of 0.
fn start_at_zero(methods: &[&'static str]) {
    for &method in methods {
        counter!("chatroom_rpcs_total", "method" => method, "code" => "OK").absolute(0);
        let _ = histogram!("chatroom_rpc_seconds", "method" => method);
    }
    gauge!("chatroom_streams_open").set(0.0);
    gauge!("chatroom_rooms_live").set(0.0);
    for name in [
        "chatroom_messages_stored_total",
        "chatroom_messages_delivered_total",
        "chatroom_stream_lagged_events_total",
        "chatroom_catch_ups_total",
        "chatroom_db_waits_total",
        "chatroom_history_pruned_total",
        "chatroom_room_feed_pruned_total",
        "chatroom_bus_gaps_total",
    ] {
        counter!(name).absolute(0);
    }
    for writer in Writer::ALL {
        let _ = histogram!("chatroom_writer_batch_size", "writer" => writer.name());
        let _ = histogram!("chatroom_writer_commit_seconds", "writer" => writer.name());
    }
    db_connections(0, 0);
    let _ = histogram!("chatroom_db_wait_seconds");
    for event in BusEvent::ALL {
        counter!("chatroom_bus_messages_total", "direction" => event.name()).absolute(0);
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "chatroom_rpcs_total",
        "Calls answered, by method and gRPC code"
    );
    describe_histogram!(
        "chatroom_rpc_seconds",
        Unit::Seconds,
        "Time to answer a call (to open a Subscribe stream), by method"
    );
    describe_gauge!(
        "chatroom_streams_open",
        "Subscribe streams open on this node"
    );
    describe_gauge!(
        "chatroom_rooms_live",
        "Rooms with a fan-out hub on this node"
    );
    describe_counter!("chatroom_messages_stored_total", "CHAT messages stored");
    describe_counter!(
        "chatroom_messages_delivered_total",
        "Messages handed to streams (one per receiving stream)"
    );
    describe_counter!(
        "chatroom_stream_lagged_events_total",
        "Events a stream fell too far behind to receive (its CHAT is read again from the database; BARRAGE and COMMAND are dropped)"
    );
    describe_counter!(
        "chatroom_catch_ups_total",
        "Times a stream read missed CHAT messages from the database"
    );
    describe_histogram!(
        "chatroom_writer_batch_size",
        "Changes per group commit, by writer (messages, membership)"
    );
    describe_histogram!(
        "chatroom_writer_commit_seconds",
        Unit::Seconds,
        "Time to apply one batch, by writer"
    );
    describe_gauge!(
        "chatroom_db_connections",
        "Database connections, by state (in_use, idle)"
    );
    describe_counter!(
        "chatroom_db_waits_total",
        "Times a call found no idle database connection and waited for one"
    );
    describe_histogram!(
        "chatroom_db_wait_seconds",
        Unit::Seconds,
        "How long those waits took (to a connection, or to the pool's timeout)"
    );
    describe_counter!(
        "chatroom_history_pruned_total",
        "Stored messages deleted by history retention"
    );
    describe_counter!(
        "chatroom_room_feed_pruned_total",
        "Room feed events deleted by --room-feed-retention"
    );
    describe_counter!(
        "chatroom_bus_messages_total",
        "Events to (out) and from (in) the other nodes; dropped when the relay queue was full; refused when their MAC did not verify"
    );
    describe_counter!(
        "chatroom_bus_gaps_total",
        "Rooms found behind the store (messages the bus lost, read from the database)"
    );
}

/// A call answered with `code` after `elapsed`.
pub fn rpc(method: &'static str, code: tonic::Code, elapsed: Duration) {
    counter!("chatroom_rpcs_total", "method" => method, "code" => code_name(code)).increment(1);
    histogram!("chatroom_rpc_seconds", "method" => method).record(elapsed.as_secs_f64());
}

/// A Subscribe stream opened (`+1`) or ended (`-1`).
pub fn streams_open(delta: f64) {
    gauge!("chatroom_streams_open").increment(delta);
}

/// The rooms with a hub, now.
pub fn rooms_live(count: usize) {
    gauge!("chatroom_rooms_live").set(count as f64);
}

/// CHAT messages stored by one batch.
pub fn messages_stored(count: usize) {
    counter!("chatroom_messages_stored_total").increment(count as u64);
}

/// A message handed to `streams` streams.
pub fn delivered(streams: usize) {
    counter!("chatroom_messages_delivered_total").increment(streams as u64);
}

/// A stream that lagged `events` behind its room's ring.
pub fn lagged(events: u64) {
    counter!("chatroom_stream_lagged_events_total").increment(events);
}

/// A stream is to read missed messages from the database (counted when its
/// catch-up is queued, once however many pages it takes).
pub fn catch_up_queued() {
    counter!("chatroom_catch_ups_total").increment(1);
}

/// The writers whose batches are measured.
#[derive(Clone, Copy, Debug)]
pub enum Writer {
    Messages,
    Membership,
}

impl Writer {
    const ALL: [Writer; 2] = [Writer::Messages, Writer::Membership];

    fn name(self) -> &'static str {
        match self {
            Writer::Messages => "messages",
            Writer::Membership => "membership",
        }
    }
}

/// A writer applied a batch of `size` changes in `elapsed`.
pub fn batch(writer: Writer, size: usize, elapsed: Duration) {
    let writer = writer.name();
    histogram!("chatroom_writer_batch_size", "writer" => writer).record(size as f64);
    histogram!("chatroom_writer_commit_seconds", "writer" => writer).record(elapsed.as_secs_f64());
}

/// The database pools' connections, now.
pub fn db_connections(in_use: usize, idle: usize) {
    gauge!("chatroom_db_connections", "state" => "in_use").set(in_use as f64);
    gauge!("chatroom_db_connections", "state" => "idle").set(idle as f64);
}

/// A call waited `elapsed` for a database connection (none was idle).
pub fn db_wait(elapsed: Duration) {
    counter!("chatroom_db_waits_total").increment(1);
    histogram!("chatroom_db_wait_seconds").record(elapsed.as_secs_f64());
}

/// History retention deleted `count` messages.
pub fn history_pruned(count: u64) {
    counter!("chatroom_history_pruned_total").increment(count);
}

/// The room feed's retention deleted `count` events.
pub fn feed_pruned(count: u64) {
    counter!("chatroom_room_feed_pruned_total").increment(count);
}

/// What became of an event on the bus between the nodes.
#[derive(Clone, Copy, Debug)]
pub enum BusEvent {
    /// Published to the other nodes.
    Out,
    /// Received from another node.
    In,
    /// Not published: the relay's queue was full.
    Dropped,
    /// Received, and refused: its MAC did not verify.
    Refused,
}

impl BusEvent {
    const ALL: [BusEvent; 4] = [
        BusEvent::Out,
        BusEvent::In,
        BusEvent::Dropped,
        BusEvent::Refused,
    ];

    fn name(self) -> &'static str {
        match self {
            BusEvent::Out => "out",
            BusEvent::In => "in",
            BusEvent::Dropped => "dropped",
            BusEvent::Refused => "refused",
        }
    }
}

/// An event to or from the other nodes.
pub fn bus(event: BusEvent) {
    counter!("chatroom_bus_messages_total", "direction" => event.name()).increment(1);
}

/// A room found behind the store.
pub fn bus_gap() {
    counter!("chatroom_bus_gaps_total").increment(1);
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
