//! Browsers: what lets a web page call the service.
//!
//! Pages speak gRPC-Web (`tonic_web` translates it to gRPC in front of every
//! service, over HTTP/1.1 or HTTP/2 on the same port). A page served from another
//! origin than the server — the usual case — is let through by the browser only if
//! the server says so, by CORS: [`cors`] answers for the origins of `--cors-origins`
//! and for no other. A browser cannot drive the bidirectional Subscribe stream, so
//! such pages receive with the server-streaming `Listen` and send with
//! `SendMessage` (see the proto).

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::{Error, Result};

/// Request headers a page may send: gRPC-Web's own, and the caller's identity.
const ALLOWED_HEADERS: [&str; 6] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    crate::api::AUTHORIZATION_HEADER,
    crate::api::USER_ID_HEADER,
];
/// Response headers a page may read: the call's status and its details.
const EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];
/// How long a browser may remember a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// The CORS answers for `origins` (`*`: any origin). No origins: no page of
/// another origin is allowed.
pub fn cors(origins: &[String]) -> Result<CorsLayer> {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let parsed = origins
            .iter()
            .map(|origin| parse_origin(origin))
            .collect::<Result<Vec<_>>>()?;
        AllowOrigin::list(parsed)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(PREFLIGHT_MAX_AGE))
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing after.
fn parse_origin(origin: &str) -> Result<HeaderValue> {
    let refuse = |why: &str| {
        Error::invalid(
            "cors_origins",
            format!("{origin:?} is not an origin ({why}); write it as scheme://host[:port]"),
        )
    };
    let (scheme, rest) = origin
        .split_once("://")
        .ok_or_else(|| refuse("no scheme"))?;
    if !matches!(scheme, "http" | "https") {
        return Err(refuse("the scheme must be http or https"));
    }
    if rest.is_empty() || rest.contains('/') {
        return Err(refuse("a path or an empty host"));
    }
    HeaderValue::from_str(origin).map_err(|_| refuse("characters a header cannot carry"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        assert!(
            cors(&[
                "https://chat.example.com".into(),
                "http://127.0.0.1:8080".into()
            ])
            .is_ok()
        );
        assert!(cors(&["*".into()]).is_ok());
        assert!(cors(&[]).is_ok());
        for bad in [
            "chat.example.com",
            "ftp://x",
            "https://x/page",
            "https://",
            "http://a\nb",
        ] {
            assert!(cors(&[bad.into()]).is_err(), "{bad} was accepted");
        }
    }
}
