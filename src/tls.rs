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
use crate::transport::Guarded;

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

/// Connections through their TLS handshake, Nagle off. Each handshake runs on a task
/// of its own (with a deadline), so one slow or hostile client never holds up the
/// accepts of others; a failed one is logged and dropped.
pub fn incoming(
    listener: tokio::net::TcpListener,
    tls: Arc<Tls>,
    stall_after: Option<Duration>,
) -> impl tokio_stream::Stream<Item = std::io::Result<Guarded<TlsStream<TcpStream>>>> {
    let (ready, connections) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = ready.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, say: try again shortly.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (tls, ready) = (tls.clone(), ready.clone());
            tokio::spawn(async move {
                match tls.accept(stream).await {
                    Ok(stream) => {
                        let _ = ready.send(Ok(Guarded::new(stream, stall_after))).await;
                    }
                    Err(error) => tracing::debug!(%error, "TLS handshake failed"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(connections)
}

/// Reads the TLS files again on every SIGHUP and whenever they change, until the
/// server stops. New connections get the new certificates; established ones keep
/// theirs.
pub async fn reload_on_sighup(tls: Arc<Tls>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP: TLS files reload only when they change");
            None
        }
    };
    let mut seen = tls.stamp();
    let mut checks = tokio::time::interval(CHANGE_CHECK);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            Some(()) = async { hangups.as_mut()?.recv().await } => "SIGHUP",
            _ = checks.tick() => {
                if tls.stamp() == seen {
                    continue;
                }
                "the files changed"
            }
            _ = stop.wait_for(|stop| *stop) => return,
        };
        seen = tls.stamp();
        match tls.reload() {
            Ok(()) => tracing::info!(why, "TLS certificates reloaded"),
            Err(error) => {
                tracing::warn!(why, %error, "TLS reload failed; the previous certificates stay")
            }
        }
    }
}
