//! `chatroom token`: mints a JWT for development and tests, or says whether this
//! server's configuration would accept one (`--check`).
//!
//! It reads the server's own `--jwt-*` flags and their environment twins
//! (`CHATROOM_JWT_SECRET`, ...), so a shell set up to run the server mints tokens that
//! server takes, and checks them with the very verifier the server builds.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;

use super::parts::{self, KeyFlags};
use crate::auth::mint::{TokenClaims, mint};
use crate::auth::{Expectations, KeySource, Verifier};
use crate::domain::Caller;
use crate::error::{Error, Result};

/// Mint a JWT for development and tests from the server's `--jwt-*` flags, or check
/// one (`--check TOKEN`): whether a server with these flags accepts it, and why not.
/// Prints the token; with `--check`, what it grants and exits 0, or why it is
/// refused and exits 1 (2: it could not be checked).
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Check this token instead of minting one (`-`: read it from standard input).
    #[arg(long, value_name = "TOKEN")]
    pub check: Option<String>,

    /// The user the token is for (its `sub`).
    #[arg(long, required_unless_present = "check", conflicts_with = "check")]
    pub sub: Option<String>,

    /// The display name a join uses when its request leaves the name empty.
    #[arg(long, conflicts_with = "check")]
    pub name: Option<String>,

    /// Roles, comma-separated (`admin`: may act in any room).
    #[arg(long, value_delimiter = ',', conflicts_with = "check")]
    pub roles: Vec<String>,

    /// The rooms the token may reach, comma-separated: exact ids, or prefixes ending
    /// in `*` (`team-*`). Without it, every room.
    #[arg(long, value_delimiter = ',', conflicts_with = "check")]
    pub rooms: Option<Vec<String>>,

    /// How long the token is valid (`90s`, `15m`, `1h`, `7d`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// The HS256 secret the server verifies with.
    #[arg(long, env = "CHATROOM_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// A file holding the HS256 secret (trailing newline ignored).
    #[arg(long, env = "CHATROOM_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// With `--check`: the PEM public key the server verifies with.
    #[arg(long, env = "CHATROOM_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// With `--check`: the JWKS URL the server takes its keys from.
    #[arg(long, env = "CHATROOM_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// The `iss` the server requires (minted tokens carry it).
    #[arg(long, env = "CHATROOM_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The `aud` the server requires (minted tokens carry it).
    #[arg(long, env = "CHATROOM_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

/// How `chatroom token` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Minted, or checked and accepted.
    Done,
    /// Checked and refused.
    Refused,
}

impl TokenArgs {
    fn key_flags(&self) -> KeyFlags<'_> {
        KeyFlags {
            secret: self.jwt_secret.as_deref(),
            secret_file: self.jwt_secret_file.as_deref(),
            public_key: self.jwt_public_key.as_deref(),
            jwks_url: self.jwt_jwks_url.as_deref(),
            jwks_refresh: Duration::from_secs(300),
        }
    }

    fn expectations(&self) -> Expectations {
        Expectations {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
        }
    }
}

/// Mints or checks, as `args` say, writing the token or the verdict to `out`. An
/// error is what could not be done at all (no key, a key file unreadable, claims a
/// server would refuse).
pub async fn run(args: TokenArgs, out: &mut impl Write) -> Result<Outcome> {
    let written = |e: std::io::Error| Error::Unavailable(format!("cannot write: {e}"));
    match &args.check {
        None => {
            let token = mint_token(&args)?;
            writeln!(out, "{token}").map_err(written)?;
            Ok(Outcome::Done)
        }
        Some(token) => {
            let token = match token.as_str() {
                "-" => read_stdin()?,
                given => given.trim().to_string(),
            };
            let verdict = check(&args, &token).await?;
            let outcome = match &verdict {
                Ok(_) => Outcome::Done,
                Err(_) => Outcome::Refused,
            };
            out.write_all(describe(&verdict).as_bytes())
                .map_err(written)?;
            Ok(outcome)
        }
    }
}

fn mint_token(args: &TokenArgs) -> Result<String> {
    let secret = match parts::key_source(&args.key_flags())? {
        Some(KeySource::Secret(secret)) => secret,
        Some(_) => {
            return Err(Error::invalid(
                "jwt_public_key",
                "only HS256 tokens are minted here (--jwt-secret or --jwt-secret-file); tokens for a public key or a JWKS come from whoever holds the private key",
            ));
        }
        None => {
            return Err(Error::invalid(
                "jwt_secret",
                "give the server's secret: --jwt-secret, --jwt-secret-file, or CHATROOM_JWT_SECRET",
            ));
        }
    };
    let claims = TokenClaims {
        sub: args.sub.clone().unwrap_or_default(),
        name: args.name.clone(),
        roles: args.roles.clone(),
        rooms: args.rooms.clone(),
        ttl: args.ttl,
        issuer: args.jwt_issuer.clone(),
        audience: args.jwt_audience.clone(),
    };
    mint(&secret, &claims)
}

/// The caller `token` proves to a server with these flags, or why it proves nothing
/// (the outer error: the flags name no usable key).
async fn check(args: &TokenArgs, token: &str) -> Result<Result<Caller>> {
    let flags = args.key_flags();
    let key = parts::key_source(&flags)?.ok_or_else(|| {
        Error::invalid(
            "jwt_secret",
            "give the key the server verifies with: --jwt-secret, --jwt-secret-file, --jwt-public-key or --jwt-jwks-url",
        )
    })?;
    let verifier = Verifier::new(key, args.expectations())?;
    if let Some(keys) = verifier.key_set() {
        // One fetch, as the server makes before it serves; nothing keeps it fresh.
        let (stop, stopped) = tokio::sync::watch::channel(true);
        keys.clone().keep_fresh(stopped).await.abort();
        drop(stop);
    }
    Ok(verifier.verify(token).await)
}

/// What a check found, in words: the grants of an accepted token, or the reason
/// (as a client would see it in `ErrorInfo.reason`) of a refused one.
fn describe(verdict: &Result<Caller>) -> String {
    let caller = match verdict {
        Ok(caller) => caller,
        Err(Error::TokenRefused {
            reason,
            description,
        }) => return format!("refused: {reason}: {description}\n"),
        Err(other) => return format!("refused: {other}\n"),
    };
    let grants = caller.grants.as_deref();
    let name = grants.and_then(|g| g.name.as_deref()).unwrap_or("(none)");
    let rooms = grants
        .and_then(|g| g.rooms.as_ref())
        .map_or_else(|| "every room".to_string(), ToString::to_string);
    let expires = match caller.expires_at {
        Some(at) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let left = Duration::from_secs(at.saturating_sub(now));
            format!("{at} (in {})", humantime::format_duration(left))
        }
        None => "never".into(),
    };
    format!(
        "accepted\nsub: {}\nadmin: {}\nname: {name}\nrooms: {rooms}\nexpires: {expires}\n",
        caller.user_id.as_str(),
        if caller.admin { "yes" } else { "no" },
    )
}

fn read_stdin() -> Result<String> {
    let mut token = String::new();
    std::io::stdin()
        .read_line(&mut token)
        .map_err(|e| Error::invalid("check", format!("cannot read standard input: {e}")))?;
    Ok(token.trim().to_string())
}
