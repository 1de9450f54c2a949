//! `ingest`: one CHAT publisher per room, many rooms; acknowledged stored messages/s.

use std::time::{Duration, Instant};

use clap::Args;

use crate::common::{self, Error, Report};
use chatroom::pb;
use chatroom::pb::subscribe_response::Event;

#[derive(Debug, Args)]
pub struct Ingest {
    /// Rooms, each with its own publisher.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// How long to publish, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unacknowledged sends each publisher keeps in flight.
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// Total messages per second over all rooms (default: as fast as acks allow).
    #[arg(long)]
    rate: Option<f64>,
    /// Send with unary SendMessage calls instead of over a Subscribe stream.
    #[arg(long)]
    unary: bool,
    /// HTTP/2 connections the publishers are spread over.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// The server's process id, to report its CPU use.
    #[arg(long)]
    server_pid: Option<u32>,
}

pub async fn run(target: &str, args: Ingest, report: &mut Report) -> Result<bool, Error> {
    let id = common::run_id();
    let channels = common::connect(target, args.connections).await?;
    let rooms: Vec<String> = (0..args.rooms)
        .map(|i| format!("ingest-{id}-{i}"))
        .collect();
    for (i, room) in rooms.iter().enumerate() {
        let user = format!("i{id}-{i}");
        common::join_all(&channels, room, std::slice::from_ref(&user), 1).await?;
    }
    let server_cpu = args.server_pid.map(common::CpuMeter::start);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    // Each publisher paces at its share of the total rate.
    let per_room_rate = args.rate.map(|r| r / args.rooms as f64);
    let mut publishers = tokio::task::JoinSet::new();
    for (i, room) in rooms.into_iter().enumerate() {
        let client = common::client(&channels[i % channels.len()], &format!("i{id}-{i}"));
        let load = Load {
            size: args.size,
            inflight: args.inflight.max(1),
            rate: per_room_rate,
            started,
            deadline,
        };
        if args.unary {
            publishers.spawn(unary_publisher(client, room, load));
        } else {
            publishers.spawn(stream_publisher(client, room, load));
        }
    }
    let mut latency = common::histogram();
    let mut acked = 0u64;
    let mut failed = 0u64;
    while let Some(result) = publishers.join_next().await {
        let (a, f, h) = result??;
        acked += a;
        failed += f;
        latency.add(&h)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    report.set("scenario", "ingest");
    report.set("rooms", args.rooms as u64);
    report.set("transport", if args.unary { "unary" } else { "stream" });
    report.set("acked", acked);
    report.set("acked_per_sec", acked as f64 / elapsed);
    report.set("failed", failed);
    report.set("latency_ms", common::latency_ms(&latency));
    if let Some(cpu) = server_cpu.and_then(|m| m.percent()) {
        report.set("server_cpu_percent", cpu);
    }
    Ok(failed == 0)
}

/// What one publisher sends: `size`-byte messages, up to `inflight` unanswered, at
/// `rate` per second (`None`: as fast as answers come), from `started` to `deadline`.
#[derive(Clone, Copy)]
struct Load {
    size: usize,
    inflight: usize,
    rate: Option<f64>,
    started: Instant,
    deadline: Instant,
}

type Outcome = Result<(u64, u64, hdrhistogram::Histogram<u64>), Error>;

async fn pace(rate: Option<f64>, started: Instant, sent: u64) {
    if let Some(rate) = rate {
        let due = started + Duration::from_secs_f64(sent as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
    }
}

async fn stream_publisher(mut client: common::Client, room: String, load: Load) -> Outcome {
    let (frames, outbound) = tokio::sync::mpsc::channel::<pb::SubscribeRequest>(load.inflight);
    let mut answers = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await?
        .into_inner();
    let mut latency = common::histogram();
    let (mut sent, mut acked, mut failed) = (0u64, 0u64, 0u64);
    let mut send_times = std::collections::VecDeque::new();
    loop {
        let outstanding = sent - acked - failed;
        let may_send = Instant::now() < load.deadline && outstanding < load.inflight as u64;
        if !may_send && outstanding == 0 {
            break;
        }
        // Acks are read while waiting for the next send's turn, so pacing never
        // delays them.
        tokio::select! {
            biased;
            frame = answers.message(), if outstanding > 0 => {
                let Some(frame) = frame? else { break };
                match frame.event {
                    Some(Event::SendAck(_)) => acked += 1,
                    Some(Event::Error(_)) => failed += 1,
                    _ => continue,
                }
                // Acks of one room come back in send order.
                if let Some(t) = send_times.pop_front() {
                    let _ = latency.record(Instant::elapsed(&t).as_micros().max(1) as u64);
                }
            }
            () = pace(load.rate, load.started, sent), if may_send => {
                sent += 1;
                send_times.push_back(Instant::now());
                frames
                    .send(pb::SubscribeRequest {
                        request_id: sent.to_string(),
                        frame: Some(pb::subscribe_request::Frame::Send(common::chat(&room, common::stamped_text(load.size)))),
                    })
                    .await?;
            }
        }
    }
    Ok((acked, failed, latency))
}

async fn unary_publisher(client: common::Client, room: String, load: Load) -> Outcome {
    let per_task_rate = load.rate.map(|r| r / load.inflight as f64);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..load.inflight {
        let mut client = client.clone();
        let room = room.clone();
        tasks.spawn(async move {
            let mut latency = common::histogram();
            let (mut acked, mut failed, mut sent) = (0u64, 0u64, 0u64);
            while Instant::now() < load.deadline {
                pace(per_task_rate, load.started, sent).await;
                sent += 1;
                let t = Instant::now();
                match client
                    .send_message(common::chat(&room, common::stamped_text(load.size)))
                    .await
                {
                    Ok(_) => acked += 1,
                    Err(_) => failed += 1,
                }
                let _ = latency.record(t.elapsed().as_micros().max(1) as u64);
            }
            (acked, failed, latency)
        });
    }
    let mut latency = common::histogram();
    let (mut acked, mut failed) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (a, f, h) = r?;
        acked += a;
        failed += f;
        latency.add(&h)?;
    }
    Ok((acked, failed, latency))
}
