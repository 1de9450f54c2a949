//! Keys from a JWKS URL: a JWKS served by the test on a local port (plain HTTP on
//! loopback), keys of each kind chosen by `kid`, a rotation, the refetch on an
//! unknown `kid` at most once every 10 s, the periodic refresh, and a provider that
//! is unreachable at start and later.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatroom::config::AuthMode;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::Code;

use crate::claims;
use crate::common::{self, Backend, TestApp, assert_error, create};
use crate::keys::{KeyPair, key_pair};

/// A signing key of the test's identity provider.
struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl SigningKey {
    fn new(kid: &str, algorithm: Algorithm, pair: &KeyPair) -> SigningKey {
        let pem = std::fs::read(&pair.private).unwrap();
        let encoding = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            other => panic!("no test key for {other:?}"),
        }
        .unwrap();
        let mut jwk = match algorithm {
            // jsonwebtoken makes JWKs of RSA and EC keys only; an Ed25519 one is the
            // key's 32 bytes, the end of its SubjectPublicKeyInfo.
            Algorithm::EdDSA => ed25519_jwk(&std::fs::read_to_string(&pair.public).unwrap()),
            _ => Jwk::from_encoding_key(&encoding, algorithm).unwrap(),
        };
        jwk.common.key_id = Some(kid.into());
        SigningKey {
            kid: kid.into(),
            algorithm,
            encoding,
            jwk,
        }
    }

    /// A valid token for `sub`, naming this key's `kid` (or `kid`).
    fn token_as(&self, sub: &str, kid: Option<&str>) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = kid.map(String::from);
        jsonwebtoken::encode(&header, &claims(sub), &self.encoding).unwrap()
    }

    fn token(&self, sub: &str) -> String {
        self.token_as(sub, Some(&self.kid))
    }
}

/// A new Ed25519 signing key `kid`, its files named `name` in `dir`.
fn ed25519(dir: &std::path::Path, kid: &str, name: &str) -> SigningKey {
    SigningKey::new(kid, Algorithm::EdDSA, &key_pair(dir, name, "ED25519"))
}

/// The JWK of an Ed25519 public key in PEM.
fn ed25519_jwk(pem: &str) -> Jwk {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    assert_eq!(der.len(), 44, "an Ed25519 SubjectPublicKeyInfo");
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[12..]);
    serde_json::from_value(serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "x": x
    }))
    .unwrap()
}

/// The test's JWKS endpoint: serves what it is told, counts the fetches, and can be
/// taken down (its port then refuses connections) and brought back.
#[derive(Clone)]
struct Provider {
    addr: SocketAddr,
    document: Arc<Mutex<String>>,
    fetches: Arc<Mutex<Vec<Instant>>>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Provider {
    /// A provider on a free port, not serving yet.
    async fn new() -> Provider {
        let port = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Provider {
            addr: port.local_addr().unwrap(),
            document: Arc::default(),
            fetches: Arc::default(),
            task: Arc::default(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn publish(&self, keys: &[&SigningKey]) {
        let set = JwkSet {
            keys: keys.iter().map(|k| k.jwk.clone()).collect(),
        };
        *self.document.lock().unwrap() = serde_json::to_string(&set).unwrap();
    }

    fn fetches(&self) -> usize {
        self.fetches.lock().unwrap().len()
    }

    fn last_fetch(&self) -> Instant {
        *self.fetches.lock().unwrap().last().expect("fetched once")
    }

    /// Serves on its port (HTTP/1.1, one request per connection).
    async fn up(&self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(64).unwrap();
        let (document, fetches) = (self.document.clone(), self.fetches.clone());
        let task = tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let (document, fetches) = (document.clone(), fetches.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    assert!(request.starts_with(b"GET /.well-known/jwks.json "));
                    fetches.lock().unwrap().push(Instant::now());
                    let body = document.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Stops serving: its port refuses connections.
    fn down(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

async fn jwks_app(backend: Backend, provider: &Provider, refresh_secs: u64) -> TestApp {
    let url = provider.url();
    TestApp::with(backend, move |c| {
        c.auth = AuthMode::Jwt;
        c.jwt_jwks_url = Some(url.clone());
        c.jwt_jwks_refresh_secs = refresh_secs;
    })
    .await
}

/// What CreateRoom with `token` says: Ok, or the refusal's reason.
async fn outcome(app: &TestApp, token: &str, room: &str) -> Result<(), String> {
    let mut client = app.token_client(token);
    match client.create_room(create(room)).await {
        Ok(_) => Ok(()),
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            use tonic_types::StatusExt;
            let info = status.get_details_error_info().expect("an ErrorInfo");
            Err(info.reason)
        }
    }
}

/// Waits until CreateRoom with `token` passes; until then it must be refused for
/// `meanwhile` and nothing else.
async fn accepted_eventually(app: &TestApp, token: &str, room: &str, meanwhile: &str) {
    common::eventually(&format!("accepted after {meanwhile}"), Ok(()), || async {
        let result = outcome(app, token, room).await;
        if let Err(reason) = &result {
            assert_eq!(reason, meanwhile, "refused for another reason");
        }
        result
    })
    .await;
}

fn refused(reason: &str) -> Result<(), String> {
    Err(reason.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_chosen_by_kid_and_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let ed = ed25519(dir.path(), "ed-1", "ed");
    let ec = SigningKey::new("ec-1", Algorithm::ES256, &key_pair(dir.path(), "ec", "EC"));
    let mut rsa = SigningKey::new(
        "rsa-1",
        Algorithm::RS256,
        &key_pair(dir.path(), "rsa", "RSA"),
    );
    // One key without `alg`: its algorithms come from its type.
    rsa.jwk.common.key_algorithm = None;
    let next = ed25519(dir.path(), "ed-2", "ed2");

    let provider = Provider::new().await;
    provider.publish(&[&ed, &ec, &rsa]);
    provider.up().await;
    let app = jwks_app(Backend::Sqlite, &provider, 300).await;
    assert_eq!(provider.fetches(), 1, "fetched once before serving");

    for (i, key) in [&ed, &ec, &rsa].into_iter().enumerate() {
        assert_eq!(
            outcome(&app, &key.token("alice"), &format!("r{i}")).await,
            Ok(())
        );
    }
    // A Subscribe stream is verified the same way.
    let mut sub = common::Sub::open(&mut app.token_client(&ed.token("alice"))).await;
    sub.attached("r0", None).await;

    // A key not published yet: unknown; within 10 s of the last fetch, no refetch —
    // not even for a flood of made-up kids.
    assert_eq!(
        outcome(&app, &next.token("alice"), "x").await,
        refused("TOKEN_KEY_UNKNOWN")
    );
    for i in 0..20 {
        let made_up = ed.token_as("alice", Some(&format!("made-up-{i}")));
        assert_eq!(
            outcome(&app, &made_up, "x").await,
            refused("TOKEN_KEY_UNKNOWN")
        );
    }
    assert_eq!(provider.fetches(), 1, "no refetch within 10 s");
    // A kid naming another kind of key: not that key's algorithm.
    let wrong_kid = ed.token_as("alice", Some("ec-1"));
    assert_eq!(
        outcome(&app, &wrong_kid, "x").await,
        refused("TOKEN_ALGORITHM_REFUSED")
    );
    // An HS256 token "signed" with a published key's id: refused by algorithm.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &claims("alice"),
        &EncodingKey::from_secret(b"anything"),
    )
    .unwrap();
    assert_eq!(
        outcome(&app, &confused, "x").await,
        refused("TOKEN_ALGORITHM_REFUSED")
    );
    // No kid, and several keys: which one is not known.
    let no_kid = ed.token_as("alice", None);
    assert_eq!(
        outcome(&app, &no_kid, "x").await,
        refused("TOKEN_KEY_UNKNOWN")
    );

    // Rotation: ed-2 published, ed-1 retired. 10 s after the last fetch, the next
    // token naming an unknown kid fetches again, once.
    provider.publish(&[&ec, &rsa, &next]);
    tokio::time::sleep_until(provider.last_fetch() + Duration::from_millis(10_100)).await;
    let mut waiting = tokio::task::JoinSet::new();
    for i in 0..5 {
        let client = app.token_client(&next.token("bob"));
        waiting.spawn(async move {
            let mut client = client;
            client.create_room(create(&format!("rotated-{i}"))).await
        });
    }
    while let Some(created) = waiting.join_next().await {
        created.unwrap().expect("ed-2 verifies after one refetch");
    }
    assert_eq!(provider.fetches(), 2, "five calls waiting on one fetch");
    assert_eq!(
        outcome(&app, &ed.token("alice"), "x").await,
        refused("TOKEN_KEY_UNKNOWN")
    );
    // The stream verified with ed-1 keeps going: a token is checked when a stream
    // opens, not per frame.
    assert!(
        sub.until_pong()
            .await
            .iter()
            .all(|e| !matches!(e, common::Ev::Error(_)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_are_refreshed_periodically() {
    let dir = tempfile::tempdir().unwrap();
    let old = ed25519(dir.path(), "k1", "k1");
    let new = ed25519(dir.path(), "k2", "k2");
    let provider = Provider::new().await;
    provider.publish(&[&old]);
    provider.up().await;
    let app = jwks_app(Backend::Sqlite, &provider, 1).await;
    // The only key of the set verifies a token without kid.
    assert_eq!(
        outcome(&app, &old.token_as("alice", None), "a").await,
        Ok(())
    );
    // Within 10 s, so only the refresh can bring k2 in.
    provider.publish(&[&old, &new]);
    let started = Instant::now();
    accepted_eventually(&app, &new.token("bob"), "b", "TOKEN_KEY_UNKNOWN").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(provider.fetches() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_is_its_own_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519(dir.path(), "k1", "k1");
    let other = ed25519(dir.path(), "k2", "k2");
    let provider = Provider::new().await;
    provider.publish(&[&key]);

    // Unreachable at start: the server starts, and refuses every token with a reason
    // that says the keys are missing, not that the token is bad.
    let app = jwks_app(Backend::Sqlite, &provider, 300).await;
    assert_eq!(
        outcome(&app, &key.token("alice"), "a").await,
        refused("TOKEN_KEYS_UNAVAILABLE")
    );
    // `x-user-id` means nothing in JWT mode, reachable or not.
    let mut header_only = app.client("alice").await;
    let status = header_only.create_room(create("a")).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_MISSING");

    // The provider comes up: the retry (every 2 s while failing) fetches the keys.
    provider.up().await;
    accepted_eventually(&app, &key.token("alice"), "a", "TOKEN_KEYS_UNAVAILABLE").await;

    // Down again later: the keys fetched keep verifying; a key the server has not
    // seen cannot be fetched once the 10 s since the last fetch are up.
    provider.down();
    tokio::time::sleep_until(provider.last_fetch() + Duration::from_millis(10_100)).await;
    assert_eq!(outcome(&app, &key.token("alice"), "b").await, Ok(()));
    assert_eq!(
        outcome(&app, &other.token("alice"), "c").await,
        refused("TOKEN_KEYS_UNAVAILABLE")
    );
}
