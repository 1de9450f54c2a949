//! `idle`: the server's memory per attached idle stream, before and after a burst.

use std::time::{Duration, Instant};

use clap::Args;

use crate::common::{self, Error, Report};
use chatroom::pb;
use chatroom::pb::subscribe_response::Event;

#[derive(Debug, Args)]
pub struct Idle {
    /// Attached streams (all in one room).
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// HTTP/2 connections the streams are spread over.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// The server's process id (its resident memory is read from /proc).
    #[arg(long)]
    server_pid: u32,
    /// Messages in the burst sent to every stream (0: no burst, measure attached only).
    #[arg(long, default_value_t = 200)]
    burst: u64,
    /// Seconds to stay idle after the burst before measuring again.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// Open the streams but attach nothing (measures the transport and session alone;
    /// no burst).
    #[arg(long)]
    no_attach: bool,
}

pub async fn run(target: &str, args: Idle, report: &mut Report) -> Result<bool, Error> {
    let id = common::run_id();
    let room = format!("idle-{id}");
    let channels = common::connect(target, args.connections).await?;
    let users: Vec<String> = (0..args.subscribers)
        .map(|i| format!("d{id}-{i}"))
        .collect();
    let publisher = format!("d{id}-pub");
    common::join_all(&channels, &room, std::slice::from_ref(&publisher), 1).await?;
    common::join_all(&channels, &room, &users, 64).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = |what| common::rss_kib(args.server_pid).ok_or(what);
    let before = rss("cannot read the server's memory")?;

    let (counts_tx, mut counts_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut streams = tokio::task::JoinSet::new();
    let mut ready = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let c = common::client(&channels[i % channels.len()], user);
        let first = if args.no_attach {
            pb::SubscribeRequest {
                request_id: "p".into(),
                frame: Some(pb::subscribe_request::Frame::Ping(pb::Ping {})),
            }
        } else {
            common::attach(&room)
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        ready.push(ready_rx);
        streams.spawn(hold(c, first, ready_tx, counts_tx.clone(), args.burst));
    }
    for r in ready {
        r.await.map_err(|_| "a stream failed to attach")?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attached = rss("cannot read the server's memory")?;
    let n = args.subscribers as f64;
    report.set("scenario", "idle");
    report.set("subscribers", args.subscribers as u64);
    report.set("connections", args.connections as u64);
    report.set("attached", !args.no_attach);
    report.set("server_rss_kib_before", before);
    report.set("server_rss_kib_attached", attached);
    report.set(
        "server_kib_per_stream",
        (attached as f64 - before as f64) / n,
    );
    if args.no_attach || args.burst == 0 {
        streams.abort_all();
        return Ok(true);
    }

    let publisher = common::client(&channels[0], &publisher);
    let burst_secs = burst(
        publisher,
        &room,
        args.burst,
        args.subscribers,
        &mut counts_rx,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = rss("cannot read the server's memory")?;
    streams.abort_all();

    report.set("server_rss_kib_after_burst", after);
    report.set(
        "server_kib_per_stream_after_burst",
        (after as f64 - before as f64) / n,
    );
    report.set(
        "burst_deliveries_per_sec",
        args.burst as f64 * n / burst_secs,
    );
    Ok(true)
}

/// One stream: opened with `first`, `ready` once it is attached (or answered), and
/// counting the messages until `burst` of them came, then saying so on `counts`.
async fn hold(
    mut client: common::Client,
    first: pb::SubscribeRequest,
    ready: tokio::sync::oneshot::Sender<()>,
    counts: tokio::sync::mpsc::UnboundedSender<()>,
    burst: u64,
) -> Result<(), Error> {
    let mut stream = common::listen(&mut client, first).await?;
    let mut ready = Some(ready);
    let mut got = 0;
    while let Some(frame) = stream.message().await? {
        match frame.event {
            Some(Event::Attached(_) | Event::Pong(_)) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Some(Event::Message(_)) => {
                got += 1;
                if got == burst {
                    let _ = counts.send(());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Sends `burst` messages and waits until every one of `streams` has them all;
/// returns how long that took, in seconds.
async fn burst(
    mut publisher: common::Client,
    room: &str,
    burst: u64,
    streams: usize,
    counts: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
) -> Result<f64, Error> {
    let started = Instant::now();
    for _ in 0..burst {
        publisher
            .send_message(common::chat(room, common::stamped_text(100)))
            .await?;
    }
    for _ in 0..streams {
        tokio::time::timeout(Duration::from_secs(60), counts.recv())
            .await
            .map_err(|_| "the burst was not delivered to every stream within 60 s")?;
    }
    Ok(started.elapsed().as_secs_f64())
}
