//! `joins`: EnterRoom + attach + LeaveRoom into one room.

use std::time::Instant;

use clap::Args;
use futures_util::StreamExt;

use crate::common::{self, Error, Report};
use chatroom::pb;
use chatroom::pb::subscribe_response::Event;

#[derive(Debug, Args)]
pub struct Joins {
    /// Users, each entering, attaching and leaving once.
    #[arg(long, default_value_t = 5000)]
    users: usize,
    /// Users in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

pub async fn run(target: &str, args: Joins, report: &mut Report) -> Result<bool, Error> {
    let id = common::run_id();
    let room = format!("joins-{id}");
    let channels = common::connect(target, args.connections).await?;
    let started = Instant::now();
    let results: Vec<Result<u64, Error>> = futures_util::stream::iter(0..args.users)
        .map(|i| {
            let mut c = common::client(&channels[i % channels.len()], &format!("j{id}-{i}"));
            let room = room.clone();
            async move {
                let t = Instant::now();
                c.enter_room(pb::EnterRoomRequest {
                    room_id: room.clone(),
                    ..Default::default()
                })
                .await?;
                let mut stream = common::listen(&mut c, common::attach(&room)).await?;
                loop {
                    match stream.message().await?.and_then(|f| f.event) {
                        Some(Event::Attached(_)) => break,
                        Some(Event::Error(e)) => return Err(format!("attach failed: {e:?}").into()),
                        Some(_) => continue,
                        None => return Err("stream ended before attached".into()),
                    }
                }
                c.leave_room(pb::LeaveRoomRequest { room_id: room }).await?;
                drop(stream);
                Ok(t.elapsed().as_micros() as u64)
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut latency = common::histogram();
    let mut failed = 0u64;
    for r in &results {
        match r {
            Ok(us) => {
                let _ = latency.record((*us).max(1));
            }
            Err(_) => failed += 1,
        }
    }
    let ok = results.len() as u64 - failed;
    report.set("scenario", "joins");
    report.set("users", args.users as u64);
    report.set("operations", ok);
    report.set("failed", failed);
    report.set("operations_per_sec", ok as f64 / elapsed);
    report.set("latency_ms", common::latency_ms(&latency));
    Ok(failed == 0)
}
