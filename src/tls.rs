//! TLS on the listener (`--tls-cert`, `--tls-key`) and client certificates
//! (`--tls-client-ca`: mTLS), with certificates reloaded on SIGHUP or when their
//! files change (checked every [`CHANGE_CHECK`]: a renewal by certbot or a
//! Kubernetes secret update needs no signal).
//!
//! The handshake is done here, with tokio-rustls, rather than by tonic's TLS
//! support, for two reasons. Reloading: each new connection takes the server
//! configuration current at its accept, so a SIGHUP that swaps certificate files
//! changes what new connections see while established ones keep theirs — nothing is
//! dropped. Hostile clients: every handshake runs on a task of its own with a
//! deadline ([`HANDSHAKE_TIMEOUT`]), so a client that connects and never finishes
//! one holds a socket for that long and never holds up anyone else's accept.
//!
//! With TLS on, plaintext is not served: a plaintext client fails its handshake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

use crate::error::{Error, Result};

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the files are checked for a change.
pub const CHANGE_CHECK: Duration = Duration::from_secs(5);

/// What the files looked like when last read: each one's modification time and
/// length (a file that cannot be read counts as changed once it can be).
pub type FilesStamp = Vec<Option<(std::time::SystemTime, u64)>>;

/// Where the certificate, its key and the client CA come from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// The listener's TLS: the current configuration, replaced whole on reload.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files; fails (naming the flag) on one that is missing or not PEM.
    pub fn load(files: TlsFiles) -> Result<Tls> {
        let config = server_config(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again. On failure the configuration in use stays.
    pub fn reload(&self) -> Result<()> {
        let config = server_config(&self.files)?;
        *self.current.write().expect("tls config lock") = Arc::new(config);
        Ok(())
    }

    /// The files' modification times and lengths now (through symlinks, so a
    /// secret volume's swapped link counts).
    pub fn stamp(&self) -> FilesStamp {
        let files = &self.files;
        [
            Some(&files.cert),
            Some(&files.key),
            files.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
    }

    /// Runs the handshake on `stream` with the configuration current now.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let config = self.current.read().expect("tls config lock").clone();
        let handshake = TlsAcceptor::from(config).accept(stream);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(done) => done,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig> {
    let certs = certificates("tls_cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| unreadable("tls_key", &files.key, e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS versions: {e}")))?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("tls_client_ca", path)? {
                roots
                    .add(ca)
                    .map_err(|e| Error::invalid("tls_client_ca", e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::invalid("tls_client_ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| Error::invalid("tls_key", format!("does not match --tls-cert: {e}")))?;
    // gRPC is HTTP/2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Every certificate in a PEM file (at least one).
fn certificates(field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(field, path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| unreadable(field, path, e))?;
    if certs.is_empty() {
        return Err(Error::invalid(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn unreadable(field: &str, path: &Path, error: impl std::fmt::Display) -> Error {
    Error::invalid(field, format!("cannot read {}: {error}", path.display()))
}
