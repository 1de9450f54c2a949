//! Typed configuration: every flag has an environment twin, and `chatroom --help`
//! explains each one.

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

use crate::domain::Dialect;
use crate::error::{Error, Result};

/// How callers are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Trust the `x-user-id` request metadata (for trusted backends behind your own gateway).
    Header,
    /// Verify `authorization: Bearer <JWT>` (its `sub` is the user); `x-user-id` is ignored.
    Jwt,
}

/// How log lines are written (to standard output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (for log collectors): time, level, target, fields,
    /// and the spans the event happened in.
    Json,
}

/// The chatroom server: chat rooms over gRPC, stored in SQLite or PostgreSQL.
#[derive(Debug, Clone, Parser)]
#[command(name = "chatroom", version, about, long_about = None)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "CHATROOM_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Where rooms, members and history are stored: `sqlite://FILE` (created if missing)
    /// or `postgres://USER@HOST:PORT/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://chatroom.db")]
    pub database_url: String,

    /// Most PostgreSQL connections the server opens (SQLite always uses one writer
    /// and a few readers).
    #[arg(long, env = "CHATROOM_DB_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub db_pool_size: u32,

    /// PostgreSQL: message writers, each storing the messages of its share of the
    /// rooms in its own transactions, so that one commits while the next is being
    /// built (a room always has the same writer: its order holds). More writers store
    /// more at full speed but commit more often, which costs latency at moderate
    /// rates (with 4: ~10 % more, ~2 ms more p99). Capped at half the pool; SQLite,
    /// which has one write connection, always uses one.
    #[arg(long, env = "CHATROOM_MESSAGE_WRITERS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub message_writers: u32,

    /// How callers are identified.
    #[arg(long, value_enum, env = "CHATROOM_AUTH", default_value = "header")]
    pub auth: AuthMode,

    /// With `--auth jwt`: the HS256 secret tokens are signed with.
    #[arg(long, env = "CHATROOM_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// With `--auth jwt`: a file holding the HS256 secret (trailing newline ignored).
    #[arg(long, env = "CHATROOM_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<std::path::PathBuf>,

    /// With `--auth jwt`: a PEM public key file (RSA, EC P-256/P-384 or Ed25519)
    /// tokens are signed for (RS*/PS*, ES256/ES384, EdDSA).
    #[arg(long, env = "CHATROOM_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// With `--auth jwt`: a JWKS URL (https, or http to a loopback address) whose
    /// public keys verify tokens, chosen by their `kid`. Fetched before serving,
    /// again every `--jwt-jwks-refresh`, and at once for an unknown `kid` (at most
    /// once every 10 s). Unreachable: the keys fetched before stay in use.
    #[arg(long, env = "CHATROOM_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// Seconds between fetches of `--jwt-jwks-url`.
    #[arg(long = "jwt-jwks-refresh", value_name = "SECONDS", env = "CHATROOM_JWT_JWKS_REFRESH", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub jwt_jwks_refresh_secs: u64,

    /// With `--auth jwt`: the `iss` every token must carry.
    #[arg(long, env = "CHATROOM_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// With `--auth jwt`: an `aud` every token must carry (tokens for other
    /// audiences are refused).
    #[arg(long, env = "CHATROOM_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// User ids that may act in any room without being a member (comma-separated;
    /// with `--auth header` — with `--auth jwt` a token's `roles` claim decides).
    #[arg(long, env = "CHATROOM_ADMIN_USERS", value_delimiter = ',')]
    pub admin_users: Vec<String>,

    /// Most rooms one user may be a member of at once; 0 means unlimited.
    #[arg(long, env = "CHATROOM_MAX_ROOMS_PER_USER", default_value_t = 100)]
    pub max_rooms_per_user: u32,

    /// Most rooms one Subscribe stream may attach at once.
    #[arg(long, env = "CHATROOM_MAX_ROOMS_PER_STREAM", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_rooms_per_stream: u32,

    /// Largest message `text`, in bytes.
    #[arg(long, env = "CHATROOM_MAX_TEXT_BYTES", default_value_t = 16 * 1024)]
    pub max_text_bytes: usize,

    /// How long after sending a message its sender may still recall or edit it
    /// (RecallMessage, EditMessage; `humantime` syntax, e.g. `2m`, `1h`); `0s`: never
    /// by the sender. The owner, moderators and admins may at any time.
    #[arg(long, value_name = "DURATION", env = "CHATROOM_RECALL_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub recall_window: std::time::Duration,

    /// Largest message `payload`, in bytes.
    #[arg(long, env = "CHATROOM_MAX_PAYLOAD_BYTES", default_value_t = 64 * 1024)]
    pub max_payload_bytes: usize,

    /// Most events each live room keeps for streams that read slower than it gets them
    /// (each only until every stream read it); a stream further behind catches up on
    /// CHAT from the database (and misses BARRAGE and COMMAND).
    #[arg(long, env = "CHATROOM_ROOM_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub room_buffer: u32,

    /// Bytes of large message frames (over 1 KiB) each live room keeps for streams that
    /// read slower than it gets them, beyond which the oldest are dropped from it (a
    /// stream that had not read one catches up on CHAT from the database). Bounds what
    /// a room's buffer can hold when a stream stops reading.
    #[arg(long, env = "CHATROOM_ROOM_BUFFER_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub room_buffer_bytes: usize,

    /// Seconds between HTTP/2 pings on an idle connection; a client that does not
    /// answer within `--keepalive-timeout` is disconnected (its streams end, its
    /// presence with them). 0 turns pings off.
    #[arg(
        long = "keepalive-interval",
        value_name = "SECONDS",
        env = "CHATROOM_KEEPALIVE_INTERVAL",
        default_value_t = 30
    )]
    pub keepalive_interval_secs: u64,

    /// Seconds a client has to answer a keepalive ping.
    #[arg(long = "keepalive-timeout", value_name = "SECONDS", env = "CHATROOM_KEEPALIVE_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_timeout_secs: u64,

    /// Seconds a Subscribe stream may have frames waiting that its client does not
    /// read (HTTP/2 window shut) before its connection is closed — the only way a
    /// server can end a stream it cannot write to; the client reconnects and resumes.
    /// An idle stream is never stalled. 0: never.
    #[arg(
        long = "stalled-stream-timeout",
        value_name = "SECONDS",
        env = "CHATROOM_STALLED_STREAM_TIMEOUT",
        default_value_t = 30
    )]
    pub stalled_stream_timeout_secs: u64,

    /// How long member join/leave events are gathered into one frame, in milliseconds.
    #[arg(long, env = "CHATROOM_MEMBER_EVENT_WINDOW_MS", default_value_t = 50)]
    pub member_event_window_ms: u64,

    /// Delete stored messages older than this (for example `30d`, `12h`, `90s`), in
    /// the background, a small batch at a time; a stream resuming from before what is
    /// kept is told so (`attached.history_truncated`). Unset: kept forever.
    #[arg(long, value_name = "DURATION", env = "CHATROOM_HISTORY_RETENTION", value_parser = parse_retention)]
    pub history_retention: Option<std::time::Duration>,

    /// Keep at most this many stored messages per room (the newest), deleting older
    /// ones in the background like `--history-retention`. Unset: no limit.
    #[arg(long, value_name = "COUNT", env = "CHATROOM_HISTORY_MAX_PER_ROOM", value_parser = clap::value_parser!(u64).range(1..))]
    pub history_max_per_room: Option<u64>,

    /// How long the room feed (WatchRooms) keeps its events: a backend whose watch
    /// was down for longer than this resumes with POSITION_EXPIRED and reads the
    /// rooms afresh. Older events are deleted in the background.
    #[arg(long, value_name = "DURATION", env = "CHATROOM_ROOM_FEED_RETENTION", default_value = "24h", value_parser = parse_retention)]
    pub room_feed_retention: std::time::Duration,

    /// NATS server URL (`nats://HOST:4222`) that makes this process one node of a
    /// cluster: nodes sharing one PostgreSQL database and one NATS deliver every
    /// room's messages to each other's streams. Needs a postgres:// `--database-url`.
    /// Unset: a single node.
    #[arg(long, env = "CHATROOM_NATS_URL")]
    pub nats_url: Option<String>,

    /// The prefix of this cluster's NATS subjects (tokens of letters, digits, `_` and
    /// `-`, joined by `.`). Default: `chatroom.` and the deployment's id, which the
    /// first node stores in the database — so deployments with databases of their
    /// own never share subjects, even on one NATS server. Either way a node accepts
    /// only events authenticated with its database's deployment key.
    #[arg(long, value_name = "PREFIX", env = "CHATROOM_NATS_SUBJECT_PREFIX", value_parser = parse_subject_prefix)]
    pub nats_subject_prefix: Option<String>,

    /// A NATS credentials file (`.creds`: a user JWT and its NKey seed), for a NATS
    /// server using decentralized (operator) authentication.
    #[arg(long, value_name = "FILE", env = "CHATROOM_NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,

    /// A file holding the NKey seed (`SU…`) to authenticate to NATS with.
    #[arg(long, value_name = "FILE", env = "CHATROOM_NATS_NKEY")]
    pub nats_nkey: Option<std::path::PathBuf>,

    /// A token to authenticate to NATS with (prefer the environment variable: a
    /// flag's value is visible to every local user in the process list).
    #[arg(long, env = "CHATROOM_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,

    /// A user name to authenticate to NATS with (with `--nats-password`). A user
    /// and password in `--nats-url` work too.
    #[arg(long, env = "CHATROOM_NATS_USER")]
    pub nats_user: Option<String>,

    /// The password of `--nats-user` (prefer the environment variable).
    #[arg(long, env = "CHATROOM_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,

    /// Verify the NATS server's certificate with this PEM CA (and require TLS). Without
    /// it a `tls://` URL verifies against the system's roots.
    #[arg(long, value_name = "FILE", env = "CHATROOM_NATS_TLS_CA")]
    pub nats_tls_ca: Option<std::path::PathBuf>,

    /// Present this PEM client certificate to NATS (with `--nats-tls-key`; require
    /// TLS).
    #[arg(long, value_name = "FILE", env = "CHATROOM_NATS_TLS_CERT")]
    pub nats_tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key of `--nats-tls-cert`.
    #[arg(long, value_name = "FILE", env = "CHATROOM_NATS_TLS_KEY")]
    pub nats_tls_key: Option<std::path::PathBuf>,

    /// This node's name in the cluster, unique per running process. Default: made
    /// anew (a UUIDv7) at every start.
    #[arg(long, env = "CHATROOM_NODE_ID")]
    pub node_id: Option<String>,

    /// In a cluster, how often (milliseconds) a node checks the rooms it has streams in
    /// against the database, so that a message the bus lost reaches them anyway: the
    /// longest such a message can take, at one small read per check.
    #[arg(long, env = "CHATROOM_CLUSTER_REPAIR_INTERVAL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..))]
    pub cluster_repair_interval_ms: u64,

    /// In a cluster, how long (milliseconds) a node's lease in the database lasts; it
    /// renews it every third of that. A node that stops renewing (killed, cut off) is
    /// dead once it runs out: its streams count offline from then, and their presence
    /// timeouts start.
    #[arg(long, env = "CHATROOM_NODE_LEASE_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(300..))]
    pub node_lease_ms: u64,

    /// In a cluster, how long (milliseconds) NATS may be unreachable before health
    /// says NOT_SERVING (delivery meanwhile heals from the database, more slowly).
    #[arg(long, env = "CHATROOM_NATS_GRACE_MS", default_value_t = 5_000)]
    pub nats_grace_ms: u64,

    /// Sends (SendMessage and stream sends) per second one user may make, per kind:
    /// CHAT and COMMAND share a bucket, BARRAGE has its own. Over it: RESOURCE_EXHAUSTED
    /// RATE_LIMITED with a RetryInfo. 0: unlimited. Per node.
    #[arg(long, env = "CHATROOM_SEND_RATE", default_value_t = 0)]
    pub send_rate: u32,

    /// How many sends one user may make at once before `--send-rate` applies
    /// (default: one second's worth).
    #[arg(long, env = "CHATROOM_SEND_BURST", default_value_t = 0)]
    pub send_burst: u32,

    /// Room changes (CreateRoom, JoinRoom, EnterRoom, LeaveRoom, SwitchRoom,
    /// UpdateRoom, DeleteRoom, SetMemberRole, TransferOwnership, KickMember, BanMember,
    /// UnbanMember) per second one user may make. Over it:
    /// RESOURCE_EXHAUSTED RATE_LIMITED with a RetryInfo, nothing changed. 0: unlimited.
    /// Per node.
    #[arg(long, env = "CHATROOM_ROOM_CHANGE_RATE", default_value_t = 0)]
    pub room_change_rate: u32,

    /// How many room changes one user may make at once before `--room-change-rate`
    /// applies (default: one second's worth).
    #[arg(long, env = "CHATROOM_ROOM_CHANGE_BURST", default_value_t = 0)]
    pub room_change_burst: u32,

    /// Most Subscribe streams one user may have open at once on this node (more:
    /// RESOURCE_EXHAUSTED TOO_MANY_STREAMS). 0: unlimited.
    #[arg(long, env = "CHATROOM_MAX_STREAMS_PER_USER", default_value_t = 64)]
    pub max_streams_per_user: u32,

    /// Most HTTP/2 streams (calls and Subscribe streams) one connection may have open
    /// at once; a client opening more waits for one to end.
    #[arg(
        long,
        env = "CHATROOM_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 1024
    )]
    pub max_streams_per_connection: u32,

    /// Serve TLS with this PEM certificate chain (with `--tls-key`); plaintext is then
    /// not served. Reloaded, with the key and client CA, on SIGHUP.
    #[arg(long, env = "CHATROOM_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key of `--tls-cert`.
    #[arg(long, env = "CHATROOM_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Require client certificates signed by this PEM CA (mTLS); needs `--tls-cert`.
    #[arg(long, env = "CHATROOM_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// Log filter, in `tracing` EnvFilter syntax (for example `info,chatroom=debug`).
    #[arg(long, env = "CHATROOM_LOG", default_value = "info")]
    pub log: String,

    /// Serve Prometheus metrics on this address, at `/metrics` (for example
    /// `127.0.0.1:9090`). Off when not given.
    #[arg(long, value_name = "ADDR", env = "CHATROOM_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Origins whose web pages may call this server with gRPC-Web (comma-separated,
    /// for example `https://chat.example.com`; `*` allows any). gRPC-Web and HTTP/1.1
    /// are always served on `--listen`; without this, browsers allow only pages of
    /// the server's own origin.
    #[arg(
        long,
        value_name = "ORIGINS",
        env = "CHATROOM_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Export spans (one per call and per Subscribe stream, with user and room ids) to
    /// this OpenTelemetry collector over OTLP/gRPC, for example
    /// `http://127.0.0.1:4317`. Off when not given. `OTEL_BSP_*` variables tune the
    /// batching.
    #[arg(long, value_name = "URL", env = "CHATROOM_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// How log lines look: `text` for people, `json` for log collectors. `RUST_LOG`,
    /// if set, overrides `--log`.
    #[arg(long, value_enum, env = "CHATROOM_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Not a flag: where the server reads the time and its timers wait. The system's
    /// clock; a test that embeds the server may set one that moves only when the test
    /// advances it (presence timeouts, destroy-when-empty, rates, retention).
    #[arg(skip)]
    pub clock: crate::domain::Clock,
}

/// A `--nats-subject-prefix`: NATS subject tokens of `[A-Za-z0-9_-]`, joined by `.`
/// (no wildcards, no empty token), at most 128 characters.
pub fn parse_subject_prefix(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > 128 {
        return Err("must be 1-128 characters".into());
    }
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if !value.split('.').all(token_ok) {
        return Err(
            "must be tokens of letters, digits, '_' and '-' joined by '.' (no wildcards or spaces)"
                .into(),
        );
    }
    Ok(value.to_string())
}

/// A `--history-retention`: a duration of at least a second (`humantime` syntax).
fn parse_retention(value: &str) -> Result<std::time::Duration, String> {
    let retention = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if retention < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(retention)
}

impl Config {
    /// The defaults of every flag, as `--help` states them (the environment is not
    /// read), serving `database_url` on `listen`. Tests start from this and change
    /// what they need. The defaults are written once, in the flags' attributes.
    pub fn new(listen: SocketAddr, database_url: impl Into<String>) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = Config::command().mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from([
                "chatroom".to_string(),
                format!("--listen={listen}"),
                format!("--database-url={}", database_url.into()),
            ])
            .expect("the defaults parse");
        Config::from_arg_matches(&matches).expect("the defaults parse")
    }

    /// Refuses flags that cannot work together, before anything is opened or
    /// written: every rule between flags is here. (Each flag's own values are
    /// checked as it is parsed; files are read when the server is built.)
    pub fn validate(&self) -> Result<()> {
        self.validate_auth()?;
        self.validate_tls()?;
        self.validate_nats()
    }

    fn validate_auth(&self) -> Result<()> {
        let keys = [
            self.jwt_secret.is_some(),
            self.jwt_secret_file.is_some(),
            self.jwt_public_key.is_some(),
            self.jwt_jwks_url.is_some(),
        ]
        .into_iter()
        .filter(|given| *given)
        .count();
        match self.auth {
            AuthMode::Header
                if keys > 0 || self.jwt_issuer.is_some() || self.jwt_audience.is_some() =>
            {
                Err(Error::invalid(
                    "auth",
                    "--jwt-* flags are for --auth jwt; with --auth header no token is read",
                ))
            }
            AuthMode::Jwt if keys != 1 => Err(Error::invalid(
                "auth",
                "--auth jwt needs exactly one of --jwt-secret, --jwt-secret-file, --jwt-public-key, --jwt-jwks-url",
            )),
            _ => Ok(()),
        }
    }

    /// `--tls-cert` and `--tls-key` go together, and `--tls-client-ca` needs them.
    fn validate_tls(&self) -> Result<()> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), Some(_)) => Ok(()),
            (None, None) if self.tls_client_ca.is_none() => Ok(()),
            (None, None) => Err(Error::invalid(
                "tls_client_ca",
                "client certificates need TLS: give --tls-cert and --tls-key too",
            )),
            _ => Err(Error::invalid(
                "tls_cert",
                "--tls-cert and --tls-key go together",
            )),
        }
    }

    /// A cluster needs PostgreSQL; every `--nats-*` option needs `--nats-url`; one
    /// way to authenticate at most; `--nats-tls-cert` and `--nats-tls-key` go
    /// together.
    fn validate_nats(&self) -> Result<()> {
        let postgres = Dialect::of(&self.database_url) == Some(Dialect::Postgres);
        if self.nats_url.is_some() && !postgres {
            // Nodes share their rooms through the database: a SQLite file is one
            // process's.
            return Err(Error::invalid(
                "nats_url",
                "a cluster (--nats-url) needs a shared PostgreSQL database: --database-url must be postgres://",
            ));
        }
        if self.nats_url.is_none() {
            let given = [
                ("nats_subject_prefix", self.nats_subject_prefix.is_some()),
                ("nats_creds", self.nats_creds.is_some()),
                ("nats_nkey", self.nats_nkey.is_some()),
                ("nats_token", self.nats_token.is_some()),
                ("nats_user", self.nats_user.is_some()),
                ("nats_password", self.nats_password.is_some()),
                ("nats_tls_ca", self.nats_tls_ca.is_some()),
                ("nats_tls_cert", self.nats_tls_cert.is_some()),
                ("nats_tls_key", self.nats_tls_key.is_some()),
            ];
            return match given.iter().find(|(_, set)| *set) {
                Some((field, _)) => Err(Error::invalid(
                    *field,
                    "NATS options need a cluster: give --nats-url too",
                )),
                None => Ok(()),
            };
        }
        if self.nats_user.is_some() != self.nats_password.is_some() {
            return Err(Error::invalid(
                "nats_user",
                "--nats-user and --nats-password go together",
            ));
        }
        let ways = [
            self.nats_creds.is_some(),
            self.nats_nkey.is_some(),
            self.nats_token.is_some(),
            self.nats_user.is_some(),
        ];
        if ways.into_iter().filter(|given| *given).count() > 1 {
            return Err(Error::invalid(
                "nats_creds",
                "give one way to authenticate to NATS: --nats-creds, --nats-nkey, --nats-token, or --nats-user with --nats-password",
            ));
        }
        if self.nats_tls_cert.is_some() != self.nats_tls_key.is_some() {
            return Err(Error::invalid(
                "nats_tls_cert",
                "--nats-tls-cert and --nats-tls-key go together",
            ));
        }
        Ok(())
    }
}
