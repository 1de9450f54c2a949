//! `rooms`: many small rooms — R rooms × S attached streams, a publisher per room at
//! M messages/s — the realistic shape (classrooms, support chats), where what a live
//! room and an idle stream cost matters more than one room's peak rate.
//!
//! Memory is read from the server's /proc in three steps, each after a pause:
//! before any stream, with every stream open but attached to nothing, and with every
//! stream attached to its room. `server_kib_per_stream` is the second step's growth
//! per stream (transport and session), `server_kib_per_room` the third's per room
//! (the room made live, its S attachments included). After the traffic and
//! `--idle-after` seconds the third is read again: what a room keeps once it is idle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;

use crate::common::{self, Error, Report};
use chatroom::pb;
use chatroom::pb::subscribe_response::Event;

#[derive(Debug, Args)]
pub struct Rooms {
    /// Rooms, each with its own streams and publisher.
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Streams attached to each room (one member each).
    #[arg(long, default_value_t = 1)]
    streams_per_room: usize,
    /// HTTP/2 connections the streams and publishers are spread over.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Messages per second each room's publisher sends (0: none, memory only).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// How long to publish, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Seconds to wait after each step before reading the server's memory.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Seconds to stay idle after the traffic before reading the server's memory
    /// again (the server hands freed pages back to the system every 10 s).
    #[arg(long, default_value_t = 12)]
    idle_after: u64,
    /// The server's process id (its memory and CPU are read from /proc).
    #[arg(long)]
    server_pid: u32,
}

/// One signal per stream.
type Signals = Vec<tokio::sync::oneshot::Receiver<()>>;

/// What every stream saw, together.
#[derive(Default)]
struct Seen {
    received: AtomicU64,
    out_of_order: AtomicU64,
}

pub async fn run(target: &str, args: Rooms, report: &mut Report) -> Result<bool, Error> {
    let id = common::run_id();
    let channels = common::connect(target, args.connections).await?;
    let rooms: Vec<String> = (0..args.rooms).map(|r| format!("r{id}-{r}")).collect();
    let members: Vec<(usize, String)> = (0..args.rooms)
        .flat_map(|r| (0..args.streams_per_room).map(move |s| (r, s)))
        .map(|(r, s)| (r, member(&rooms[r], s)))
        .collect();
    let memberships = members
        .iter()
        .map(|(r, user)| (rooms[*r].as_str(), user.as_str()));
    common::enter_all(&channels, memberships, 64).await?;
    let pause = || tokio::time::sleep(Duration::from_secs(args.settle));
    let rss = || common::rss_kib(args.server_pid).ok_or("cannot read the server's memory");
    pause().await;
    let before = rss()?;

    let seen = Arc::new(Seen::default());
    let latency = Arc::new(Mutex::new(common::histogram()));
    let (attach_tx, attach_rx) = tokio::sync::watch::channel(false);
    let (mut streams, opened, attached) =
        open_streams(&channels, &rooms, &members, &seen, &latency, &attach_rx);
    wait_all(opened, "a stream failed to open").await?;
    pause().await;
    let open = rss()?;
    let _ = attach_tx.send(true);
    wait_all(attached, "a stream failed to attach").await?;
    pause().await;
    let live = rss()?;

    let streams_n = members.len() as f64;
    let rooms_n = args.rooms as f64;
    report.set("scenario", "rooms");
    report.set("rooms", args.rooms as u64);
    report.set("streams_per_room", args.streams_per_room as u64);
    report.set("connections", args.connections as u64);
    report.set("server_rss_kib_before", before);
    report.set("server_rss_kib_open", open);
    report.set("server_rss_kib_live", live);
    report.set("server_kib_per_stream", kib(open, before) / streams_n);
    report.set("server_kib_per_room", kib(live, open) / rooms_n);
    if args.rate <= 0.0 {
        streams.abort_all();
        return Ok(true);
    }

    let cpu = common::CpuMeter::start(args.server_pid);
    let started = Instant::now();
    let sent = publish_all(&args, &channels, &rooms).await?;
    let expected = sent * args.streams_per_room as u64;
    drain(&seen, expected).await;
    let span = started.elapsed().as_secs_f64();
    let used = cpu.used().ok_or("cannot read the server's CPU time")?;
    tokio::time::sleep(Duration::from_secs(args.idle_after)).await;
    let after = rss()?;
    streams.abort_all();

    let received = seen.received.load(Ordering::Relaxed);
    let out_of_order = seen.out_of_order.load(Ordering::Relaxed);
    report.set("published", sent);
    report.set("delivered", received);
    report.set("lost", expected.saturating_sub(received));
    report.set("out_of_order", out_of_order);
    report.set("deliveries_per_sec", received as f64 / span);
    report.set("server_cpu_percent", 100.0 * used.as_secs_f64() / span);
    if received > 0 {
        let per_delivery = used.as_secs_f64() * 1e6 / received as f64;
        report.set("server_cpu_us_per_delivery", per_delivery);
    }
    let latency = common::latency_ms(&latency.lock().expect("latency lock"));
    report.set("latency_ms", latency);
    report.set("server_rss_kib_after_traffic", after);
    report.set(
        "server_kib_per_room_after_traffic",
        kib(after, open) / rooms_n,
    );
    Ok(received == expected && out_of_order == 0)
}

/// Spawns a [`Stream`] for each member, spread over the channels; each says on the
/// first receivers once it is open and on the second once it attached (which it
/// does when `attach` turns true).
fn open_streams(
    channels: &[tonic::transport::Channel],
    rooms: &[String],
    members: &[(usize, String)],
    seen: &Arc<Seen>,
    latency: &Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    attach: &tokio::sync::watch::Receiver<bool>,
) -> (tokio::task::JoinSet<Result<(), Error>>, Signals, Signals) {
    let mut streams = tokio::task::JoinSet::new();
    let (mut opened, mut attached) = (Vec::new(), Vec::new());
    for (i, (room, user)) in members.iter().enumerate() {
        let stream = Stream {
            room: rooms[*room].clone(),
            seen: seen.clone(),
            latency: latency.clone(),
            attach: attach.clone(),
        };
        let (open_tx, open_rx) = tokio::sync::oneshot::channel();
        let (attached_tx, attached_rx) = tokio::sync::oneshot::channel();
        opened.push(open_rx);
        attached.push(attached_rx);
        let client = common::client(&channels[i % channels.len()], user);
        streams.spawn(stream.hold(client, open_tx, attached_tx));
    }
    (streams, opened, attached)
}

/// A room's `s`th member (the 0th publishes).
fn member(room: &str, s: usize) -> String {
    format!("{room}-{s}")
}

fn kib(after: u64, before: u64) -> f64 {
    after as f64 - before as f64
}

async fn wait_all(signals: Signals, failed: &'static str) -> Result<(), Error> {
    for signal in signals {
        signal.await.map_err(|_| failed)?;
    }
    Ok(())
}

/// One stream: opened with a ping, attached to its room when told, then counting
/// the room's messages.
struct Stream {
    room: String,
    seen: Arc<Seen>,
    latency: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    attach: tokio::sync::watch::Receiver<bool>,
}

impl Stream {
    async fn hold(
        mut self,
        mut client: common::Client,
        opened: tokio::sync::oneshot::Sender<()>,
        attached: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(), Error> {
        let ping = pb::SubscribeRequest {
            request_id: "p".into(),
            frame: Some(pb::subscribe_request::Frame::Ping(pb::Ping {})),
        };
        let mut stream = common::listen(&mut client, ping).await?;
        match stream.message().await?.and_then(|f| f.event) {
            Some(Event::Pong(_)) => {
                let _ = opened.send(());
            }
            other => return Err(format!("expected a pong, got {other:?}").into()),
        }
        self.attach.wait_for(|go| *go).await?;
        stream.send(common::attach(&self.room)).await?;
        let mut attached = Some(attached);
        let mut top = 0;
        while let Some(frame) = stream.message().await? {
            match frame.event {
                Some(Event::Attached(_)) => {
                    if let Some(a) = attached.take() {
                        let _ = a.send(());
                    }
                }
                Some(Event::Message(m)) if m.seq > 0 => {
                    let now = common::now_micros();
                    if m.seq <= top {
                        self.seen.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    top = top.max(m.seq);
                    self.seen.received.fetch_add(1, Ordering::Relaxed);
                    if let Some(sent) = common::stamp_of(&m.text) {
                        let mut latency = self.latency.lock().expect("latency lock");
                        let _ = latency.record(now.saturating_sub(sent).max(1));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Every room's publisher (its first member) sends at `--rate` for `--duration`,
/// the rooms' clocks spread evenly over one period; returns how many were sent.
async fn publish_all(
    args: &Rooms,
    channels: &[tonic::transport::Channel],
    rooms: &[String],
) -> Result<u64, Error> {
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let failed = Arc::new(AtomicBool::new(false));
    let mut publishers = tokio::task::JoinSet::new();
    for (r, room) in rooms.iter().enumerate() {
        let mut client = common::client(&channels[r % channels.len()], &member(room, 0));
        let room = room.clone();
        let size = args.size;
        let offset = period.mul_f64(r as f64 / rooms.len() as f64);
        let failed = failed.clone();
        publishers.spawn(async move {
            let mut ticks = tokio::time::interval_at(start + offset, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0u64;
            while ticks.tick().await < deadline {
                let text = common::stamped_text(size);
                match client.send_message(common::chat(&room, text)).await {
                    Ok(_) => sent += 1,
                    Err(_) => failed.store(true, Ordering::Relaxed),
                }
            }
            sent
        });
    }
    let mut sent = 0;
    while let Some(count) = publishers.join_next().await {
        sent += count?;
    }
    if failed.load(Ordering::Relaxed) {
        return Err("a send failed".into());
    }
    Ok(sent)
}

/// Waits until the streams received `expected` messages: at most 10 s, ending after
/// 2 s without progress.
async fn drain(seen: &Seen, expected: u64) {
    let received = || seen.received.load(Ordering::Relaxed);
    let (limit, stall) = (Duration::from_secs(10), Duration::from_secs(2));
    common::wait_for_count(received, expected, limit, stall).await;
}
