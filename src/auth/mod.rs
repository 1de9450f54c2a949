//! Who is calling: bearer tokens (`--auth jwt`) verified into a [`Caller`].
//!
//! A token is a JWT signed with the configured key — an HS256 secret, a PEM public
//! key (RS256/384/512, PS256/384/512, ES256/384, EdDSA), or one of the public keys
//! of a JWKS document an identity provider publishes ([`jwks`], chosen by the
//! token's `kid`). The algorithms accepted are exactly those of the key's kind, so a
//! token that names another (an HS256 token made with an RSA public key as its
//! "secret", the classic confusion) or `none` is refused before any signature is
//! checked. `exp` is required; `nbf`, `iss`
//! (`--jwt-issuer`) and `aud` (`--jwt-audience`) are checked, with a leeway of
//! [`LEEWAY_SECS`] for clocks that disagree a little.
//!
//! The claims: `sub` is the user; `name` the display name a join uses when the
//! request leaves it empty; a `roles` array containing `admin` makes an admin; a
//! `rooms` array (exact ids, or prefixes ending in `*`) limits the rooms the token may
//! create, join, enter, switch to or attach. Every refusal carries a stable reason
//! (`TOKEN_EXPIRED`, ...), so a client can tell "mint a new token" from "fix your
//! code". This module knows neither gRPC nor SQL: `api/` hands it the token's text.

pub mod jwks;
pub mod mint;

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::domain::{Caller, Grants, RoomScope, UserId, check_name};
use crate::error::{Error, Result};

/// Seconds of clock difference tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 10;

/// What an RSA key verifies.
const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Where the verifying key comes from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// A shared HMAC secret (HS256/384/512).
    Secret(Vec<u8>),
    /// A PEM public key: RSA, EC (P-256/P-384) or Ed25519.
    PublicKeyPem(Vec<u8>),
    /// The public keys a JWKS document lists, fetched and kept fresh.
    Jwks(jwks::Source),
}

/// What a token must say besides a valid signature.
#[derive(Clone, Debug, Default)]
pub struct Expectations {
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Verifies bearer tokens.
#[derive(Clone)]
pub struct Verifier {
    keys: Keys,
}

#[derive(Clone)]
enum Keys {
    /// One key, from the flags.
    Fixed(Arc<Key>),
    /// A key set, by `kid`.
    Jwks(Arc<jwks::KeySet>),
}

/// A key and what a token verified with it must be (its algorithms, the claims).
pub(crate) struct Key {
    decoding: DecodingKey,
    validation: Validation,
}

impl Key {
    fn new(decoding: DecodingKey, algorithms: Vec<Algorithm>, expect: &Expectations) -> Key {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &expect.issuer {
            // Checked only when present unless required: a token without `iss` would
            // pass an issuer check.
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &expect.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // No audience configured: a token's `aud`, if any, is not checked.
            None => validation.validate_aud = false,
        }
        validation.required_spec_claims = required.into_iter().map(String::from).collect();
        Key {
            decoding,
            validation,
        }
    }
}

/// The claims this service reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Seconds since the epoch (a number; jsonwebtoken has checked it).
    exp: f64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

impl Verifier {
    /// A verifier for tokens signed with `key`, expected to say `expect`. Fails on
    /// a key that cannot be read (the error names `field`, the flag it came from).
    pub fn new(key: KeySource, expect: Expectations) -> Result<Self> {
        let (decoding, algorithms) = match key {
            KeySource::Secret(secret) => {
                if secret.is_empty() {
                    return Err(Error::invalid("jwt_secret", "must not be empty"));
                }
                (
                    DecodingKey::from_secret(&secret),
                    vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
                )
            }
            KeySource::PublicKeyPem(pem) => public_key(&pem)?,
            KeySource::Jwks(source) => {
                let keys = jwks::KeySet::new(source, expect)?;
                return Ok(Verifier {
                    keys: Keys::Jwks(Arc::new(keys)),
                });
            }
        };
        Ok(Verifier {
            keys: Keys::Fixed(Arc::new(Key::new(decoding, algorithms, &expect))),
        })
    }

    /// The key set, when keys come from a JWKS (its fetching is started by the
    /// server: [`jwks::KeySet::keep_fresh`]).
    pub fn key_set(&self) -> Option<&Arc<jwks::KeySet>> {
        match &self.keys {
            Keys::Jwks(set) => Some(set),
            Keys::Fixed(_) => None,
        }
    }

    /// The caller a token proves, or why it proves nothing. Awaits only when a JWKS
    /// does not have the token's key yet and may be fetched again.
    pub async fn verify(&self, token: &str) -> Result<Caller> {
        let fail = |e: jsonwebtoken::errors::Error| match header_alg(token) {
            // jsonwebtoken knows no `none`, so it fails to read such a header at all;
            // the client is told what is wrong with it.
            Some(alg) if alg.eq_ignore_ascii_case("none") => refused(&ErrorKind::InvalidAlgorithm),
            _ => refused(e.kind()),
        };
        let key = match &self.keys {
            Keys::Fixed(key) => key.clone(),
            Keys::Jwks(set) => {
                let header = jsonwebtoken::decode_header(token).map_err(fail)?;
                set.key(header.kid.as_deref()).await?
            }
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.decoding, &key.validation).map_err(fail)?;
        let claims = data.claims;
        let user_id = UserId::parse(claims.sub).map_err(|e| claims_invalid("sub", &e))?;
        if let Some(name) = &claims.name {
            check_name("name", name).map_err(|e| claims_invalid("name", &e))?;
        }
        let rooms = match &claims.rooms {
            Some(patterns) => {
                Some(RoomScope::parse(patterns).map_err(|e| claims_invalid("rooms", &e))?)
            }
            None => None,
        };
        let grants = (claims.name.is_some() || rooms.is_some()).then(|| {
            std::sync::Arc::new(Grants {
                name: claims.name,
                rooms,
            })
        });
        Ok(Caller {
            user_id,
            admin: claims.roles.iter().any(|r| r == "admin"),
            grants,
            expires_at: Some(claims.exp.max(0.0) as u64),
        })
    }
}

/// The `alg` a token's header names, if it can be read at all.
fn header_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let header: serde_json::Value = serde_json::from_slice(&json).ok()?;
    Some(header.get("alg")?.as_str()?.to_string())
}

/// The decoding key of a PEM public key, and the algorithms of its kind.
fn public_key(pem: &[u8]) -> Result<(DecodingKey, Vec<Algorithm>)> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((key, RSA_ALGORITHMS.to_vec()));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok((key, vec![Algorithm::ES256, Algorithm::ES384]));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, vec![Algorithm::EdDSA]));
    }
    Err(Error::invalid(
        "jwt_public_key",
        "not a PEM public key (RSA, EC P-256/P-384 or Ed25519)",
    ))
}

/// A token refused, by what jsonwebtoken found.
fn refused(kind: &ErrorKind) -> Error {
    let (reason, description) = match kind {
        ErrorKind::ExpiredSignature => ("TOKEN_EXPIRED", "the token has expired"),
        ErrorKind::ImmatureSignature => ("TOKEN_NOT_YET_VALID", "the token is not valid yet (nbf)"),
        ErrorKind::InvalidSignature => (
            "TOKEN_SIGNATURE_INVALID",
            "the token's signature does not verify",
        ),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => (
            "TOKEN_ALGORITHM_REFUSED",
            "the token's algorithm is not one the configured key verifies",
        ),
        ErrorKind::InvalidIssuer => (
            "TOKEN_ISSUER_INVALID",
            "the token's issuer (iss) is not the expected one",
        ),
        ErrorKind::InvalidAudience => (
            "TOKEN_AUDIENCE_INVALID",
            "the token's audience (aud) is not this service",
        ),
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
            ("TOKEN_ISSUER_INVALID", "the token has no issuer (iss)")
        }
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
            ("TOKEN_AUDIENCE_INVALID", "the token has no audience (aud)")
        }
        ErrorKind::MissingRequiredClaim(_) => (
            "TOKEN_CLAIMS_INVALID",
            "the token lacks a required claim (exp and sub are required)",
        ),
        ErrorKind::Json(_) => (
            "TOKEN_CLAIMS_INVALID",
            "the token's claims are not as expected",
        ),
        _ => (
            "TOKEN_MALFORMED",
            "the bearer token is not a well-formed JWT",
        ),
    };
    Error::TokenRefused {
        reason,
        description: description.to_string(),
    }
}

fn claims_invalid(claim: &str, error: &Error) -> Error {
    Error::TokenRefused {
        reason: "TOKEN_CLAIMS_INVALID",
        description: format!("the token's {claim} claim is invalid: {error}"),
    }
}
