//! What the flags ask for, made into the parts the server is built from: the token
//! verifier, the way to NATS, the TLS certificates, the limits. Key and credential
//! files are read here, once, before anything starts: a file that cannot be read
//! is refused at start, not at the first call or the first reconnect. The rules
//! between flags are [`Config::validate`]'s; these assume them kept.

use std::path::Path;
use std::sync::Arc;

use crate::auth::{Expectations, KeySource, Verifier};
use crate::cluster::bus::{Auth, Connection};
use crate::config::{AuthMode, Config};
use crate::error::{Error, Result};
use crate::{domain, rooms, tls};

fn read(field: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::invalid(field, format!("cannot read {}: {e}", path.display())))
}

fn read_text(field: &str, path: &Path) -> Result<String> {
    let text = read(field, path)?;
    String::from_utf8(text)
        .map_err(|_| Error::invalid(field, format!("{} is not UTF-8 text", path.display())))
}

/// The bearer-token verifier `--auth jwt` asks for (`None` with `--auth header`), its
/// key read from wherever the flags say.
pub fn token_verifier(config: &Config) -> Result<Option<Verifier>> {
    if config.auth == AuthMode::Header {
        return Ok(None);
    }
    let flags = KeyFlags {
        secret: config.jwt_secret.as_deref(),
        secret_file: config.jwt_secret_file.as_deref(),
        public_key: config.jwt_public_key.as_deref(),
        jwks_url: config.jwt_jwks_url.as_deref(),
        jwks_refresh: std::time::Duration::from_secs(config.jwt_jwks_refresh_secs),
    };
    let key = key_source(&flags)?.expect("Config::validate requires one key with --auth jwt");
    let expect = Expectations {
        issuer: config.jwt_issuer.clone(),
        audience: config.jwt_audience.clone(),
    };
    Verifier::new(key, expect).map(Some)
}

/// The `--jwt-*` flags that name the key tokens are verified with (the server's, and
/// `chatroom token`'s, which reads the same).
pub struct KeyFlags<'a> {
    pub secret: Option<&'a str>,
    pub secret_file: Option<&'a Path>,
    pub public_key: Option<&'a Path>,
    pub jwks_url: Option<&'a str>,
    pub jwks_refresh: std::time::Duration,
}

/// The key the flags name (`None`: none), read from wherever they say. More than one
/// is refused: [`Config::validate`] refuses them for the server, and `chatroom token`
/// would otherwise answer with one of them for a server that cannot start.
pub fn key_source(flags: &KeyFlags<'_>) -> Result<Option<KeySource>> {
    let given = [
        flags.secret.is_some(),
        flags.secret_file.is_some(),
        flags.public_key.is_some(),
        flags.jwks_url.is_some(),
    ];
    if given.into_iter().filter(|given| *given).count() > 1 {
        return Err(Error::invalid(
            "jwt_secret",
            "give one key: --jwt-secret, --jwt-secret-file, --jwt-public-key or --jwt-jwks-url (or their CHATROOM_JWT_* variables)",
        ));
    }
    Ok(Some(if let Some(secret) = hs_secret(flags)? {
        KeySource::Secret(secret)
    } else if let Some(path) = flags.public_key {
        KeySource::PublicKeyPem(read("jwt_public_key", path)?)
    } else if let Some(url) = flags.jwks_url {
        KeySource::Jwks(crate::auth::jwks::Source::parse(url, flags.jwks_refresh)?)
    } else {
        return Ok(None);
    }))
}

/// The HS256 secret, from `--jwt-secret` or the file `--jwt-secret-file` names (its
/// trailing line breaks dropped: the file an editor or `echo` wrote).
fn hs_secret(flags: &KeyFlags<'_>) -> Result<Option<Vec<u8>>> {
    if let Some(secret) = flags.secret {
        return Ok(Some(secret.as_bytes().to_vec()));
    }
    let Some(path) = flags.secret_file else {
        return Ok(None);
    };
    let mut secret = read("jwt_secret_file", path)?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    Ok(Some(secret))
}

/// How to reach NATS, if this is a cluster node, its credential files read (the
/// TLS files are read by the client, so they are read once here to fail early).
pub fn nats_connection(config: &Config) -> Result<Option<Connection>> {
    let Some(url) = &config.nats_url else {
        return Ok(None);
    };
    let auth = if let Some(path) = &config.nats_creds {
        // As written: the file's sections end with line breaks, which its parser
        // needs.
        Auth::Creds(read_text("nats_creds", path)?)
    } else if let Some(path) = &config.nats_nkey {
        Auth::NKey(read_text("nats_nkey", path)?.trim().to_string())
    } else if let Some(token) = &config.nats_token {
        Auth::Token(token.clone())
    } else if let (Some(user), Some(password)) = (&config.nats_user, &config.nats_password) {
        Auth::UserPassword(user.clone(), password.clone())
    } else {
        Auth::default()
    };
    for (field, path) in [
        ("nats_tls_ca", config.nats_tls_ca.as_ref()),
        ("nats_tls_cert", config.nats_tls_cert.as_ref()),
        ("nats_tls_key", config.nats_tls_key.as_ref()),
    ] {
        if let Some(path) = path {
            read(field, path)?;
        }
    }
    let tls_client = config
        .nats_tls_cert
        .clone()
        .zip(config.nats_tls_key.clone());
    Ok(Some(Connection {
        url: url.clone(),
        auth,
        tls_ca: config.nats_tls_ca.clone(),
        tls_client,
    }))
}

/// The listener's certificates, if `--tls-cert` asks for TLS.
pub fn tls(config: &Config) -> Result<Option<Arc<tls::Tls>>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let files = tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: config.tls_client_ca.clone(),
    };
    Ok(Some(Arc::new(tls::Tls::load(files)?)))
}

/// The limits the rules enforce.
pub fn limits(config: &Config) -> rooms::Limits {
    rooms::Limits {
        max_rooms_per_user: config.max_rooms_per_user,
        messages: domain::MessageLimits {
            max_text_bytes: config.max_text_bytes,
            max_payload_bytes: config.max_payload_bytes,
        },
        sends: rooms::rates::Rate {
            per_second: config.send_rate,
            burst: config.send_burst,
        },
        room_changes: rooms::rates::Rate {
            per_second: config.room_change_rate,
            burst: config.room_change_burst,
        },
        max_streams_per_user: config.max_streams_per_user,
    }
}

/// The largest request worth decoding: the biggest SendMessage the message limits
/// allow (text, payload, every target) or the biggest attribute set a room may
/// have, whichever is larger, plus room for the other fields. Anything bigger is
/// refused by size alone, before it is buffered whole (tonic's default is 4 MiB).
pub fn max_request_bytes(config: &Config) -> usize {
    use domain::{
        MAX_ATTRIBUTE_KEY_CHARS, MAX_ATTRIBUTE_VALUE_CHARS, MAX_ATTRIBUTES, MAX_TARGETS,
        MAX_USER_ID_LEN,
    };
    const HEADROOM: usize = 64 * 1024;
    let message =
        config.max_text_bytes + config.max_payload_bytes + MAX_TARGETS * (MAX_USER_ID_LEN + 4);
    // Four bytes per character at most, and a few of framing per entry.
    let attributes =
        MAX_ATTRIBUTES * (4 * (MAX_ATTRIBUTE_KEY_CHARS + MAX_ATTRIBUTE_VALUE_CHARS) + 8);
    message.max(attributes) + HEADROOM
}
