//! Keys from a JWKS URL (`--jwt-jwks-url`): the public keys an identity provider
//! publishes, chosen by a token's `kid`.
//!
//! The set is fetched once before the server serves, then every `--jwt-jwks-refresh`
//! (and every [`RETRY_AFTER_FAILURE`] while fetches fail). A token whose `kid` the set
//! does not have makes it fetch again at once — how a rotation that signs with a new
//! key before the next refresh is picked up — but at most once every
//! [`MIN_REFETCH`] counted from the last fetch of any kind, so tokens with made-up
//! `kid`s cannot turn the server into a flood of requests to the provider. Such a
//! token waits for that fetch (a single one, shared by every call that needs it).
//!
//! When the provider cannot be reached, the keys last fetched stay in use: tokens
//! they verify keep working. A token whose key is not among them is refused with
//! `TOKEN_KEYS_UNAVAILABLE` (the keys could not be fetched: try again later) rather
//! than `TOKEN_KEY_UNKNOWN` (the keys were fetched and this one is not there).
//!
//! Only public signing keys are taken: RSA, EC P-256/P-384 and Ed25519, each for the
//! algorithms of its kind (or the one its `alg` names). Symmetric (`oct`) keys and
//! keys whose `use` is not `sig` are skipped: a published symmetric key would let
//! anyone sign.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use super::{Expectations, Key};
use crate::error::{Error, Result};

/// Least time between two fetches, whatever asks for them.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// How soon a failed fetch is tried again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read (providers publish a few kilobytes).
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Where the keys are and how often they are fetched again.
#[derive(Clone, Debug)]
pub struct Source {
    pub url: reqwest::Url,
    pub refresh: Duration,
}

impl Source {
    /// A source for `url`: `https`, or `http` to a loopback address only (keys
    /// fetched in the clear from elsewhere could be anyone's).
    pub fn parse(url: &str, refresh: Duration) -> Result<Source> {
        let field = "jwt_jwks_url";
        let url = reqwest::Url::parse(url).map_err(|e| Error::invalid(field, e.to_string()))?;
        let loopback = match url.host_str() {
            Some("localhost") => true,
            Some(host) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(Error::invalid(
                    field,
                    "must be https (http only to a loopback address)",
                ));
            }
            other => return Err(Error::invalid(field, format!("unsupported scheme {other}"))),
        }
        Ok(Source { url, refresh })
    }
}

/// The keys of a JWKS, by `kid`.
pub struct KeySet {
    source: Source,
    expect: Expectations,
    client: reqwest::Client,
    keys: RwLock<Arc<Keys>>,
    /// Held while fetching: calls that need a fetch share one.
    fetch: Mutex<Fetched>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<Key>>,
    /// The keys without a `kid` (a token without `kid` may use the only key).
    unnamed: Vec<Arc<Key>>,
}

impl Keys {
    fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => match (self.by_kid.len(), self.unnamed.len()) {
                (1, 0) => self.by_kid.values().next().cloned(),
                (0, 1) => self.unnamed.first().cloned(),
                _ => None,
            },
        }
    }
}

/// The outcome of the last fetch.
#[derive(Default)]
struct Fetched {
    at: Option<Instant>,
    failed: bool,
}

impl KeySet {
    /// An empty set for `source`; nothing is fetched until [`KeySet::keep_fresh`].
    pub fn new(source: Source, expect: Expectations) -> Result<KeySet> {
        // reqwest's rustls takes the process's crypto provider; this binary uses
        // ring throughout (tokio-rustls for the server side too). Installing fails
        // only when one is installed already, which is as good.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("chatroom/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::invalid("jwt_jwks_url", format!("no HTTP client: {e}")))?;
        Ok(KeySet {
            source,
            expect,
            client,
            keys: RwLock::default(),
            fetch: Mutex::default(),
        })
    }

    /// The key for a token's `kid`, fetching the set again first when it lacks it
    /// and the last fetch is [`MIN_REFETCH`] old.
    pub(crate) async fn key(&self, kid: Option<&str>) -> Result<Arc<Key>> {
        if let Some(key) = self.current().find(kid) {
            return Ok(key);
        }
        let mut fetched = self.fetch.lock().await;
        // Another call may have fetched while this one waited.
        if let Some(key) = self.current().find(kid) {
            return Ok(key);
        }
        let due = fetched.at.is_none_or(|at| at.elapsed() >= MIN_REFETCH);
        if kid.is_some() && due {
            self.fetch_now(&mut fetched).await;
            if let Some(key) = self.current().find(kid) {
                return Ok(key);
            }
        }
        Err(if fetched.failed {
            keys_unavailable()
        } else {
            key_unknown(kid)
        })
    }

    /// Fetches the set now, then again every refresh interval (every
    /// [`RETRY_AFTER_FAILURE`] while fetches fail), until `stop`. The first fetch is done before this returns: a server
    /// whose provider answers verifies from its first call on.
    pub async fn keep_fresh(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        self.refresh().await;
        tokio::spawn(async move {
            // Wakes every RETRY_AFTER_FAILURE (or refresh, if shorter) and fetches when
            // the last fetch failed — however it was asked for — or is a refresh old.
            let tick = RETRY_AFTER_FAILURE.min(self.source.refresh);
            loop {
                tokio::select! {
                    () = tokio::time::sleep(tick) => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                let mut fetched = self.fetch.lock().await;
                let due = fetched.failed
                    || fetched
                        .at
                        .is_none_or(|at| at.elapsed() >= self.source.refresh);
                if due {
                    self.fetch_now(&mut fetched).await;
                }
            }
        })
    }

    async fn refresh(&self) {
        let mut fetched = self.fetch.lock().await;
        self.fetch_now(&mut fetched).await;
    }

    fn current(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fetches and installs the set; on failure the keys in use stay.
    async fn fetch_now(&self, fetched: &mut Fetched) {
        fetched.at = Some(Instant::now());
        match self.download().await {
            Ok(set) => {
                let keys = self.keys_of(&set);
                tracing::info!(
                    url = %self.source.url,
                    keys = keys.by_kid.len() + keys.unnamed.len(),
                    "fetched the JWKS"
                );
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                fetched.failed = false;
            }
            Err(error) => {
                tracing::warn!(url = %self.source.url, %error, "could not fetch the JWKS; keeping the keys fetched before");
                fetched.failed = true;
            }
        }
    }

    async fn download(&self) -> std::result::Result<JwkSet, String> {
        let mut response = self
            .client
            .get(self.source.url.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?
            .error_for_status()
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("larger than {MAX_DOCUMENT_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))
    }

    /// The usable keys of a set; the others are logged and skipped.
    fn keys_of(&self, set: &JwkSet) -> Keys {
        let mut keys = Keys::default();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone();
            match usable(jwk) {
                Ok((decoding, algorithms)) => {
                    let key = Arc::new(Key::new(decoding, algorithms, &self.expect));
                    match kid {
                        Some(kid) => {
                            keys.by_kid.insert(kid, key);
                        }
                        None => keys.unnamed.push(key),
                    }
                }
                Err(why) => tracing::warn!(?kid, why, "skipping a JWKS key"),
            }
        }
        keys
    }
}

/// A JWK's decoding key and the algorithms it verifies, or why it is not used.
fn usable(jwk: &Jwk) -> std::result::Result<(DecodingKey, Vec<Algorithm>), &'static str> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Err("not a signing key (use is not sig)");
    }
    let of_kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => super::RSA_ALGORITHMS.to_vec(),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err("an EC curve other than P-256 or P-384"),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return Err("an OKP curve other than Ed25519"),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric key: a published secret would let anyone sign");
        }
    };
    let algorithms = match jwk.common.key_algorithm {
        None => of_kind,
        Some(named) => {
            let named = named
                .to_string()
                .parse::<Algorithm>()
                .map_err(|_| "its alg is not a signature algorithm")?;
            if !of_kind.contains(&named) {
                return Err("its alg does not fit its key type");
            }
            vec![named]
        }
    };
    let decoding = DecodingKey::from_jwk(jwk).map_err(|_| "its key parameters do not parse")?;
    Ok((decoding, algorithms))
}

fn keys_unavailable() -> Error {
    Error::TokenRefused {
        reason: "TOKEN_KEYS_UNAVAILABLE",
        description: "the signing keys (JWKS) could not be fetched; try again later".into(),
    }
}

fn key_unknown(kid: Option<&str>) -> Error {
    let description = match kid {
        Some(_) => "the token's kid names no key of the JWKS".to_string(),
        None => "the token has no kid and the JWKS has more than one key".to_string(),
    };
    Error::TokenRefused {
        reason: "TOKEN_KEY_UNKNOWN",
        description,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        let refresh = Duration::from_secs(300);
        assert!(Source::parse("https://idp.example.com/.well-known/jwks.json", refresh).is_ok());
        assert!(Source::parse("http://127.0.0.1:8080/jwks", refresh).is_ok());
        assert!(Source::parse("http://localhost/jwks", refresh).is_ok());
        assert!(Source::parse("http://[::1]/jwks", refresh).is_ok());
        assert!(Source::parse("http://idp.example.com/jwks", refresh).is_err());
        assert!(Source::parse("ftp://127.0.0.1/jwks", refresh).is_err());
        assert!(Source::parse("not a url", refresh).is_err());
    }

    #[test]
    fn symmetric_and_encryption_keys_are_skipped() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "s", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "EdDSA",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "wrong-alg", "alg": "RS256",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]}))
        .unwrap();
        let kinds: Vec<_> = set.keys.iter().map(|k| usable(k).map(|(_, a)| a)).collect();
        assert!(kinds[0].is_err());
        assert!(kinds[1].is_err());
        assert_eq!(kinds[2].as_ref().unwrap(), &vec![Algorithm::EdDSA]);
        assert!(kinds[3].is_err());
    }
}
