//! Making HS256 tokens for development and tests (`chatroom token`), with the claims
//! [`super::Verifier`] reads. Every claim is checked by the same rules the verifier
//! applies, so a token minted here is one a server with the same secret, issuer and
//! audience accepts, not one refused at its first call.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::domain::{RoomScope, UserId, check_name};
use crate::error::{Error, Result};

/// What a minted token says.
#[derive(Clone, Debug, Default)]
pub struct TokenClaims {
    /// The user (`sub`).
    pub sub: String,
    /// The display name a join uses when its request leaves it empty.
    pub name: Option<String>,
    /// Roles (`admin` makes an admin).
    pub roles: Vec<String>,
    /// The rooms the token may reach: exact ids, or prefixes ending in `*`; `None`:
    /// every room.
    pub rooms: Option<Vec<String>>,
    /// How long the token is valid from now.
    pub ttl: Duration,
    /// `iss`, for a server with `--jwt-issuer`.
    pub issuer: Option<String>,
    /// `aud`, for a server with `--jwt-audience`.
    pub audience: Option<String>,
}

/// The JSON of the claims (absent ones left out, as a verifier expects).
#[derive(Serialize)]
struct Wire<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    rooms: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// An HS256 token of `claims` signed with `secret`, valid from now for `claims.ttl`.
/// Refuses claims the verifier would refuse (the error names the flag's field).
pub fn mint(secret: &[u8], claims: &TokenClaims) -> Result<String> {
    if secret.is_empty() {
        return Err(Error::invalid("jwt_secret", "must not be empty"));
    }
    UserId::parse(claims.sub.clone()).map_err(|e| e.in_field("sub"))?;
    if let Some(name) = &claims.name {
        check_name("name", name)?;
    }
    if let Some(rooms) = &claims.rooms {
        RoomScope::parse(rooms)?;
    }
    if claims.roles.iter().any(String::is_empty) {
        return Err(Error::invalid("roles", "a role must not be empty"));
    }
    if claims.ttl.is_zero() {
        return Err(Error::invalid("ttl", "must be more than 0s"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let wire = Wire {
        sub: &claims.sub,
        iat: now,
        exp: now.saturating_add(claims.ttl.as_secs().max(1)),
        name: claims.name.as_deref(),
        roles: &claims.roles,
        rooms: claims.rooms.as_deref(),
        iss: claims.issuer.as_deref(),
        aud: claims.audience.as_deref(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &wire,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| Error::invalid("jwt_secret", format!("cannot sign: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Expectations, KeySource, Verifier};

    const SECRET: &[u8] = b"a secret for the mint's tests";

    fn claims(sub: &str) -> TokenClaims {
        TokenClaims {
            sub: sub.into(),
            ttl: Duration::from_secs(600),
            ..TokenClaims::default()
        }
    }

    fn verifier(issuer: Option<&str>, audience: Option<&str>) -> Verifier {
        let expect = Expectations {
            issuer: issuer.map(String::from),
            audience: audience.map(String::from),
        };
        Verifier::new(KeySource::Secret(SECRET.to_vec()), expect).unwrap()
    }

    #[tokio::test]
    async fn a_minted_token_verifies_with_every_claim() {
        let token = mint(
            SECRET,
            &TokenClaims {
                name: Some("Alice A.".into()),
                roles: vec!["admin".into()],
                rooms: Some(vec!["lobby".into(), "team-*".into()]),
                issuer: Some("https://issuer.test".into()),
                audience: Some("chatroom".into()),
                ..claims("alice")
            },
        )
        .unwrap();
        let caller = verifier(Some("https://issuer.test"), Some("chatroom"))
            .verify(&token)
            .await
            .unwrap();
        assert_eq!(caller.user_id.as_str(), "alice");
        assert!(caller.admin);
        let grants = caller.grants.unwrap();
        assert_eq!(grants.name.as_deref(), Some("Alice A."));
        let rooms = grants.rooms.as_ref().unwrap();
        let allows = |id: &str| rooms.allows(&crate::domain::RoomId::parse(id).unwrap());
        assert!(allows("lobby") && allows("team-7") && !allows("other"));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let left = caller.expires_at.unwrap() - now.as_secs();
        assert!((595..=600).contains(&left), "{left} s left");
    }

    #[tokio::test]
    async fn a_plain_token_is_no_admin_and_reaches_every_room() {
        let token = mint(SECRET, &claims("bob")).unwrap();
        let caller = verifier(None, None).verify(&token).await.unwrap();
        assert!(!caller.admin);
        assert!(
            caller.grants.is_none(),
            "no name, no rooms: nothing granted"
        );
        // Without --jwt-issuer on the mint, a server that requires one refuses it.
        let refused = verifier(Some("https://issuer.test"), None)
            .verify(&token)
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused,
                Error::TokenRefused {
                    reason: "TOKEN_ISSUER_INVALID",
                    ..
                }
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn claims_the_verifier_would_refuse_are_refused_here() {
        let field = |claims: TokenClaims| match mint(SECRET, &claims).unwrap_err() {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(claims("")), "sub");
        assert_eq!(field(claims(&"u".repeat(300))), "sub");
        let bad_room = TokenClaims {
            rooms: Some(vec!["has space".into()]),
            ..claims("a")
        };
        assert_eq!(field(bad_room), "rooms");
        let long_name = TokenClaims {
            name: Some("n".repeat(1000)),
            ..claims("a")
        };
        assert_eq!(field(long_name), "name");
        let empty_role = TokenClaims {
            roles: vec![String::new()],
            ..claims("a")
        };
        assert_eq!(field(empty_role), "roles");
        let no_time = TokenClaims {
            ttl: Duration::ZERO,
            ..claims("a")
        };
        assert_eq!(field(no_time), "ttl");
        assert!(matches!(
            mint(b"", &claims("a")).unwrap_err(),
            Error::InvalidArgument { field, .. } if field == "jwt_secret"
        ));
    }
}
