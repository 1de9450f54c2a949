//! What every scenario needs: connections, identities, a clock, process figures, and
//! the report.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use chatroom::pb;
use chatroom::pb::chat_room_service_client::ChatRoomServiceClient;

pub type Client = ChatRoomServiceClient<InterceptedService<Channel, As>>;
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Adds the caller's identity to every request.
#[derive(Clone)]
pub struct As(&'static str, MetadataValue<Ascii>);

impl Interceptor for As {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(self.0, self.1.clone());
        Ok(request)
    }
}

/// With `--jwt-secret`, clients carry an HS256 token per user instead of `x-user-id`
/// (a server with `--auth jwt` and the same secret verifies one per call and per
/// stream).
static JWT_SECRET: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// Makes every client from now on authenticate with tokens signed by `secret`.
pub fn use_jwt_secret(secret: &str) {
    let _ = JWT_SECRET.set(secret.as_bytes().to_vec());
}

/// The identity `user`'s calls carry.
fn identity(user: &str) -> As {
    match JWT_SECRET.get() {
        None => As("x-user-id", user.parse().expect("ASCII user id")),
        Some(secret) => {
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                + 24 * 3600;
            let claims = serde_json::json!({ "sub": user, "exp": exp });
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret),
            )
            .expect("an HS256 token");
            As(
                "authorization",
                format!("Bearer {token}").parse().expect("an ASCII token"),
            )
        }
    }
}

/// `count` separate HTTP/2 connections to `target`.
pub async fn connect(target: &str, count: usize) -> Result<Vec<Channel>, Error> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let channel = Endpoint::from_shared(format!("http://{target}"))?
            .tcp_nodelay(true)
            .initial_connection_window_size(16 * 1024 * 1024)
            .initial_stream_window_size(1024 * 1024)
            .connect()
            .await?;
        channels.push(channel);
    }
    Ok(channels)
}

/// A client acting as `user` over `channel`.
pub fn client(channel: &Channel, user: &str) -> Client {
    ChatRoomServiceClient::with_interceptor(channel.clone(), identity(user))
        .max_decoding_message_size(64 * 1024 * 1024)
}

/// A fresh id so runs never share rooms.
pub fn run_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()[..12].to_string()
}

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// A CHAT text of `size` bytes that starts with its send time, for latency.
pub fn stamped_text(size: usize) -> String {
    let mut text = format!("{:016}", now_micros());
    text.extend(std::iter::repeat_n('x', size.saturating_sub(16)));
    text
}

/// The send time a [`stamped_text`] carries.
pub fn stamp_of(text: &str) -> Option<u64> {
    text.get(..16)?.parse().ok()
}

/// CPU time (user + system) a process has used, from /proc.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) are space-separated;
    // utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Resident memory of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU use of a process over a span, as a percentage of one core.
pub struct CpuMeter {
    pid: u32,
    start: Option<Duration>,
    wall: std::time::Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Self {
        CpuMeter {
            pid,
            start: cpu_time(pid),
            wall: std::time::Instant::now(),
        }
    }

    pub fn percent(&self) -> Option<f64> {
        let used = self.used()?;
        Some(100.0 * used.as_secs_f64() / self.wall.elapsed().as_secs_f64())
    }

    /// CPU time used since the start.
    pub fn used(&self) -> Option<Duration> {
        cpu_time(self.pid)?.checked_sub(self.start?)
    }
}

/// Waits until `count` reaches `target`: at most `limit`, and no longer than `stall`
/// without it moving (a run that lost messages ends its drain there).
pub async fn wait_for_count(
    count: impl Fn() -> u64,
    target: u64,
    limit: Duration,
    stall: Duration,
) {
    let started = std::time::Instant::now();
    let (mut last, mut last_progress) = (0, std::time::Instant::now());
    while started.elapsed() < limit {
        let now = count();
        if now >= target {
            return;
        }
        if now != last {
            last = now;
            last_progress = std::time::Instant::now();
        } else if last_progress.elapsed() > stall {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A latency histogram in microseconds (1 µs to 1 h, 3 significant figures).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// p50/p99/p99.9 (and max) in milliseconds.
pub fn latency_ms(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "count": h.len(),
    })
}

/// The figures of a run: printed as a table, and with `--json` as one JSON object on
/// the last line.
#[derive(Default)]
pub struct Report {
    fields: Map<String, Value>,
}

impl Report {
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_string(), value.into());
    }

    pub fn print(&self, json: bool) {
        for (key, value) in &self.fields {
            let shown = match value {
                Value::Object(o) => o
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                Value::Number(n) if n.is_f64() => format!("{:.1}", n.as_f64().unwrap_or(0.0)),
                other => other.to_string(),
            };
            println!("{key:>24}  {shown}");
        }
        if json {
            println!("{}", Value::Object(self.fields.clone()));
        }
    }
}

/// A listening Subscribe stream: its responses, and the sending side kept open.
/// Dropping it ends both, which resets the stream: a request side left open forever
/// (as a never-ending outbound stream would) keeps the HTTP/2 stream — and the
/// server's session — alive after the responses are dropped.
pub struct Listening {
    pub responses: tonic::Streaming<pb::SubscribeResponse>,
    sending: tokio::sync::mpsc::Sender<pb::SubscribeRequest>,
}

impl Listening {
    pub async fn message(&mut self) -> Result<Option<pb::SubscribeResponse>, Status> {
        self.responses.message().await
    }

    /// Sends one more frame on the stream.
    pub async fn send(&self, frame: pb::SubscribeRequest) -> Result<(), Error> {
        self.sending
            .send(frame)
            .await
            .map_err(|_| "the stream's request side is closed".into())
    }
}

/// Opens a Subscribe stream that sends one `first` frame and then listens.
pub async fn listen(client: &mut Client, first: pb::SubscribeRequest) -> Result<Listening, Status> {
    use tokio_stream::StreamExt;
    let (sending, outbound) = tokio::sync::mpsc::channel(1);
    let outbound =
        tokio_stream::once(first).chain(tokio_stream::wrappers::ReceiverStream::new(outbound));
    Ok(Listening {
        responses: client.subscribe(outbound).await?.into_inner(),
        sending,
    })
}

/// The frame that attaches `room` live.
pub fn attach(room: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        request_id: "a".into(),
        frame: Some(pb::subscribe_request::Frame::Attach(pb::AttachRoom {
            room_id: room.to_string(),
            after_seq: None,
        })),
    }
}

/// A CHAT send request.
pub fn chat(room_id: &str, text: String) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        room_id: room_id.to_string(),
        text,
        ..Default::default()
    }
}

/// Joins `users` into `room` (creating it), `parallel` at a time.
pub async fn join_all(
    channels: &[Channel],
    room: &str,
    users: &[String],
    parallel: usize,
) -> Result<(), Error> {
    enter_all(
        channels,
        users.iter().map(|user| (room, user.as_str())),
        parallel,
    )
    .await
}

/// Enters each user into its room (creating the rooms), `parallel` at a time, the
/// calls spread over `channels`.
pub async fn enter_all<'a>(
    channels: &[Channel],
    memberships: impl Iterator<Item = (&'a str, &'a str)>,
    parallel: usize,
) -> Result<(), Error> {
    use futures_util::StreamExt;
    let results: Vec<Result<(), Error>> = futures_util::stream::iter(memberships.enumerate())
        .map(|(i, (room, user))| {
            let mut c = client(&channels[i % channels.len()], user);
            let room = room.to_string();
            async move {
                c.enter_room(pb::EnterRoomRequest {
                    room_id: room,
                    name: "bench".into(),
                    ..Default::default()
                })
                .await?;
                Ok(())
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}
