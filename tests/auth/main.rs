//! Verified identities (`--auth jwt`): every way a token is refused, what a valid one
//! grants, keys of every kind and the algorithms they verify, and the `rooms` claim.
//! Tokens are made in the test with jsonwebtoken, keys with the `openssl` command.

use chatroom_testkit as common;
use chatroom_testkit::on_both_stores;

mod command;
mod jwks;
mod keys;
mod matrix;
mod scope;
mod streams;
mod tokens;

use std::time::{SystemTime, UNIX_EPOCH};

use chatroom::config::AuthMode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use common::{Backend, TestApp};

/// The HS256 secret of the test servers.
const SECRET: &[u8] = b"a secret only the test and the server know";
const ISSUER: &str = "https://auth.example.test";
const AUDIENCE: &str = "chatroom";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims a valid token for `sub` carries: an hour to live, the issuer and audience.
fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": now() + 3600, "iss": ISSUER, "aud": AUDIENCE })
}

/// `claims` with `extra` merged in (a `null` removes a claim).
fn with(mut claims: Value, extra: Value) -> Value {
    for (key, value) in extra.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    claims
}

/// An HS256 token of `claims`, signed with `secret`.
fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A token with the server's secret.
fn token(claims: &Value) -> String {
    hs256(claims, SECRET)
}

/// A server verifying HS256 tokens with [`SECRET`], issuer and audience set.
async fn jwt_app(backend: Backend) -> TestApp {
    jwt_app_on(backend, chatroom::domain::Clock::system()).await
}

/// [`jwt_app`] on `clock` (a stream's token expiry waits on it; tokens themselves are
/// checked against the system's time).
async fn jwt_app_on(backend: Backend, clock: chatroom::domain::Clock) -> TestApp {
    jwt_app_with(backend, clock, |_| {}).await
}

/// [`jwt_app_on`] with other limits changed by `configure`.
async fn jwt_app_with(
    backend: Backend,
    clock: chatroom::domain::Clock,
    configure: impl Fn(&mut chatroom::Config) + Send + Sync + 'static,
) -> TestApp {
    TestApp::with_clock(backend, &clock, move |c| {
        c.auth = AuthMode::Jwt;
        c.jwt_secret = Some(String::from_utf8(SECRET.to_vec()).unwrap());
        c.jwt_issuer = Some(ISSUER.into());
        c.jwt_audience = Some(AUDIENCE.into());
        configure(c);
    })
    .await
}
