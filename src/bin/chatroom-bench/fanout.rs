//! `fanout`: one room, N attached streams over C connections, one CHAT publisher.
//!
//! With `--targets A,B,...` (nodes of one cluster) the streams are spread over the
//! nodes in turn, C connections to each, and the publisher sends through the first:
//! every message crosses to the other nodes before it reaches their streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use crate::common::{self, Error, Report};
use chatroom::pb;
use chatroom::pb::subscribe_response::Event;

#[derive(Debug, Args)]
pub struct Fanout {
    /// Attached streams.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// HTTP/2 connections the streams are spread over (to each node).
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Nodes of one cluster (host:port, comma-separated) to spread the streams over;
    /// the publisher sends through the first. Default: the one --target.
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// How long to publish, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Publish R messages per second (default: as fast as acks allow).
    #[arg(long, conflicts_with = "lead")]
    rate: Option<f64>,
    /// Full speed, but never more than W messages ahead of the slowest subscriber.
    #[arg(long)]
    lead: Option<u64>,
    /// Message size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Sends the publisher keeps unacknowledged.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// The server's process id (with --targets: each node's, comma-separated), to
    /// report its CPU use.
    #[arg(long = "server-pid", value_delimiter = ',')]
    server_pids: Vec<u32>,
}

/// What one subscriber saw.
struct Seen {
    /// Which node the stream was on (an index into the targets).
    node: usize,
    received: u64,
    duplicated: u64,
    out_of_order: u64,
    latency: hdrhistogram::Histogram<u64>,
    last_delivery: Option<Instant>,
}

pub async fn run(target: &str, args: Fanout, report: &mut Report) -> Result<bool, Error> {
    let id = common::run_id();
    let room = format!("fanout-{id}");
    let targets = if args.targets.is_empty() {
        vec![target.to_string()]
    } else {
        args.targets.clone()
    };
    let mut nodes = Vec::with_capacity(targets.len());
    for target in &targets {
        nodes.push(common::connect(target, args.connections).await?);
    }
    // Joins and the publisher go through the first node.
    let channels = nodes[0].clone();
    let users: Vec<String> = (0..args.subscribers)
        .map(|i| format!("f{id}-{i}"))
        .collect();
    let publisher = format!("f{id}-pub");
    common::join_all(&channels, &room, std::slice::from_ref(&publisher), 1).await?;
    common::join_all(&channels, &room, &users, 64).await?;

    // Every subscriber's highest seq, for --lead.
    let highest: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.subscribers).map(|_| AtomicU64::new(0)).collect());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (mut subscribers, attached) = spawn_subscribers(&nodes, &users, &room, &highest, &stop_rx);
    for ready in attached {
        ready.await.map_err(|_| "a subscriber failed to attach")?;
    }

    let server_cpu: Vec<_> = args
        .server_pids
        .iter()
        .map(|&pid| common::CpuMeter::start(pid))
        .collect();
    let client_cpu = common::CpuMeter::start(std::process::id());
    let client = common::client(&channels[0], &publisher);
    let (started, sent) = publish(&args, client, &room, &highest).await?;
    drain(&highest, sent, args.subscribers).await;
    let server_cpu: Vec<(Duration, f64)> = server_cpu
        .iter()
        .filter_map(|m| Some((m.used()?, m.percent()?)))
        .collect();
    let client_cpu = client_cpu.percent();
    let _ = stop_tx.send(true);

    let mut totals = Totals {
        latency: common::histogram(),
        received: 0,
        received_by_node: vec![0; nodes.len()],
        duplicated: 0,
        out_of_order: 0,
        lost: 0,
        last_delivery: started,
    };
    while let Some(seen) = subscribers.join_next().await {
        totals.add(seen??, sent)?;
    }
    report.set("scenario", "fanout");
    report.set("subscribers", args.subscribers as u64);
    report.set("nodes", nodes.len() as u64);
    report.set("connections", (args.connections * nodes.len()) as u64);
    totals.report(report, started, sent);
    if server_cpu.len() == args.server_pids.len() && !server_cpu.is_empty() {
        report_server_cpu(report, &server_cpu, &totals, sent);
    }
    if let Some(cpu) = client_cpu {
        report.set("client_cpu_percent", cpu);
    }
    Ok(totals.lost == 0 && totals.duplicated == 0 && totals.out_of_order == 0)
}

/// The servers' CPU use (each node's time and percentage of one core, in the order of
/// the targets): in all, per delivery, and with several nodes each node's share —
/// per delivery to its own streams, and per message published (the first node's
/// stores each and relays it out; every other's takes each in from the bus).
fn report_server_cpu(report: &mut Report, cpu: &[(Duration, f64)], totals: &Totals, sent: u64) {
    let micros = |(used, _): &(Duration, f64)| used.as_secs_f64() * 1e6;
    let per = |us: f64, n: u64| if n == 0 { 0.0 } else { us / n as f64 };
    report.set(
        "server_cpu_percent",
        cpu.iter().map(|(_, percent)| percent).sum::<f64>(),
    );
    let total: f64 = cpu.iter().map(micros).sum();
    report.set("server_cpu_us_per_delivery", per(total, totals.received));
    if cpu.len() > 1 {
        let percent: Vec<f64> = cpu.iter().map(|(_, percent)| *percent).collect();
        report.set("server_cpu_percent_by_node", percent);
        let by_delivery: Vec<f64> = cpu
            .iter()
            .zip(&totals.received_by_node)
            .map(|(node, &received)| per(micros(node), received))
            .collect();
        report.set("server_cpu_us_per_delivery_by_node", by_delivery);
        let by_message: Vec<f64> = cpu.iter().map(|node| per(micros(node), sent)).collect();
        report.set("server_cpu_us_per_message_by_node", by_message);
    }
}

/// A [`Subscriber`] for each user, spread over the nodes in turn (and over each
/// node's connections); each says on its receiver once it is attached.
fn spawn_subscribers(
    nodes: &[Vec<tonic::transport::Channel>],
    users: &[String],
    room: &str,
    highest: &Arc<Vec<AtomicU64>>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> (
    tokio::task::JoinSet<Result<Seen, Error>>,
    Vec<tokio::sync::oneshot::Receiver<()>>,
) {
    let mut subscribers = tokio::task::JoinSet::new();
    let mut attached = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let node = &nodes[i % nodes.len()];
        let client = common::client(&node[(i / nodes.len()) % node.len()], user);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        attached.push(ready_rx);
        let subscriber = Subscriber {
            index: i,
            node: i % nodes.len(),
            highest: highest.clone(),
            stop: stop.clone(),
            ready: Some(ready_tx),
        };
        subscribers.spawn(subscriber.watch(client, common::attach(room)));
    }
    (subscribers, attached)
}

/// One attached stream, counting what it receives.
struct Subscriber {
    index: usize,
    node: usize,
    /// Every subscriber's highest seq; this one's at `index`.
    highest: Arc<Vec<AtomicU64>>,
    stop: tokio::sync::watch::Receiver<bool>,
    /// Told when the room is attached.
    ready: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Subscriber {
    /// Attaches and counts every message until told to stop.
    async fn watch(
        mut self,
        mut client: common::Client,
        attach: pb::SubscribeRequest,
    ) -> Result<Seen, Error> {
        let mut stream = common::listen(&mut client, attach).await?;
        let mut seen_bits: Vec<u64> = Vec::new();
        let mut seen = Seen {
            node: self.node,
            received: 0,
            duplicated: 0,
            out_of_order: 0,
            latency: common::histogram(),
            last_delivery: None,
        };
        let mut top = 0u64;
        loop {
            let frame = tokio::select! {
                biased;
                frame = stream.message() => frame?,
                _ = self.stop.changed() => break,
            };
            let Some(frame) = frame else { break };
            match frame.event {
                Some(Event::Attached(_)) => {
                    if let Some(r) = self.ready.take() {
                        let _ = r.send(());
                    }
                }
                Some(Event::Message(m)) if m.seq > 0 => {
                    let now = common::now_micros();
                    let (word, bit) = ((m.seq / 64) as usize, m.seq % 64);
                    if seen_bits.len() <= word {
                        seen_bits.resize(word + 1, 0);
                    }
                    if seen_bits[word] & (1 << bit) != 0 {
                        seen.duplicated += 1;
                        continue;
                    }
                    seen_bits[word] |= 1 << bit;
                    if m.seq <= top {
                        seen.out_of_order += 1;
                    }
                    top = top.max(m.seq);
                    seen.received += 1;
                    self.highest[self.index].store(top, Ordering::Relaxed);
                    if let Some(sent) = common::stamp_of(&m.text) {
                        let _ = seen.latency.record(now.saturating_sub(sent).max(1));
                    }
                    seen.last_delivery = Some(Instant::now());
                }
                _ => {}
            }
        }
        Ok(seen)
    }
}

/// Publishes for `--duration` through a Subscribe stream with up to `--inflight` sends
/// unacknowledged, paced by `--rate` or `--lead`; returns when it started and how
/// many it sent, once every send is acknowledged.
async fn publish(
    args: &Fanout,
    mut client: common::Client,
    room: &str,
    highest: &[AtomicU64],
) -> Result<(Instant, u64), Error> {
    let (frames, outbound) =
        tokio::sync::mpsc::channel::<pb::SubscribeRequest>(args.inflight.max(1));
    let mut acks = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await?
        .into_inner();
    let window = Arc::new(tokio::sync::Semaphore::new(args.inflight.max(1)));
    let ack_window = window.clone();
    let acker = tokio::spawn(async move {
        let mut acked = 0u64;
        while let Ok(Some(frame)) = acks.message().await {
            match frame.event {
                Some(Event::SendAck(_)) => {
                    acked += 1;
                    ack_window.add_permits(1);
                }
                Some(Event::Error(e)) => return Err(format!("send failed: {e:?}")),
                _ => {}
            }
        }
        Ok(acked)
    });

    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let mut sent = 0u64;
    while Instant::now() < deadline {
        if let Some(rate) = args.rate {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        if let Some(lead) = args.lead {
            while sent.saturating_sub(slowest(highest)) >= lead {
                if Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        window.acquire().await?.forget();
        sent += 1;
        let frame = pb::SubscribeRequest {
            request_id: sent.to_string(),
            frame: Some(pb::subscribe_request::Frame::Send(common::chat(
                room,
                common::stamped_text(args.size),
            ))),
        };
        frames.send(frame).await?;
    }
    let _ = window.acquire_many(args.inflight.max(1) as u32).await?;
    drop(frames);
    acker.abort();
    Ok((started, sent))
}

/// Waits for every subscriber to see all `sent` messages: at most 5 s, ending after
/// 1 s without progress.
async fn drain(highest: &[AtomicU64], sent: u64, subscribers: usize) {
    let seen = || {
        highest
            .iter()
            .map(|h| h.load(Ordering::Relaxed).min(sent))
            .sum()
    };
    let all = sent * subscribers as u64;
    common::wait_for_count(seen, all, Duration::from_secs(5), Duration::from_secs(1)).await;
}

/// What every subscriber saw, together.
struct Totals {
    latency: hdrhistogram::Histogram<u64>,
    received: u64,
    /// What the streams on each node received.
    received_by_node: Vec<u64>,
    duplicated: u64,
    out_of_order: u64,
    lost: u64,
    last_delivery: Instant,
}

impl Totals {
    /// Reports what was published and delivered, per second of the run (from
    /// `started` to the last delivery).
    fn report(&self, report: &mut Report, started: Instant, sent: u64) {
        let span = self
            .last_delivery
            .duration_since(started)
            .as_secs_f64()
            .max(1e-9);
        report.set("published", sent);
        report.set("published_per_sec", sent as f64 / span);
        report.set("delivered", self.received);
        report.set("deliveries_per_sec", self.received as f64 / span);
        report.set("lost", self.lost);
        report.set("duplicated", self.duplicated);
        report.set("out_of_order", self.out_of_order);
        report.set("latency_ms", common::latency_ms(&self.latency));
    }

    fn add(&mut self, seen: Seen, sent: u64) -> Result<(), Error> {
        self.received += seen.received;
        self.received_by_node[seen.node] += seen.received;
        self.duplicated += seen.duplicated;
        self.out_of_order += seen.out_of_order;
        self.lost += sent.saturating_sub(seen.received);
        self.latency.add(&seen.latency)?;
        if let Some(t) = seen.last_delivery {
            self.last_delivery = self.last_delivery.max(t);
        }
        Ok(())
    }
}

fn slowest(highest: &[AtomicU64]) -> u64 {
    highest
        .iter()
        .map(|h| h.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0)
}
