//! TLS and mTLS on the real binary: handshakes that must succeed and ones that must
//! fail, plaintext refused, and certificates reloaded on SIGHUP or when their files
//! change, without dropping the connections already open. Certificates are made in the test with `openssl`.

use chatroom_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chatroom::pb;
use chatroom::pb::chat_room_service_client::ChatRoomServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use common::certs::{ca, leaf};
use common::{Backend, Client, Sub, TestDb, UserHeader, WAIT, chat, create};

/// The binary serving over TLS with `args`; killed on drop.
struct TlsServer {
    child: tokio::process::Child,
    port: u16,
    _db: TestDb,
}

impl TlsServer {
    async fn start(dir: &Path, extra: &[&str]) -> TlsServer {
        let db = TestDb::new(Backend::Sqlite).await;
        let port = common::free_port();
        let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatroom"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                &db.url,
            ])
            .args(["--log", "warn", "--tls-cert", cert.to_str().unwrap()])
            .args(["--tls-key", key.to_str().unwrap()])
            .args(extra)
            .kill_on_drop(true)
            .spawn()
            .expect("start the chatroom binary");
        // Up once its port accepts (the handshake is each test's business).
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        TlsServer {
            child,
            port,
            _db: db,
        }
    }

    /// A channel trusting CA `ca`, presenting `identity` (a name in `dir`) if any.
    async fn connect(
        &self,
        dir: &Path,
        ca: &str,
        identity: Option<&str>,
    ) -> Result<Channel, tonic::transport::Error> {
        let read = |name: String| std::fs::read(dir.join(name)).unwrap();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(format!("{ca}.pem"))))
            .domain_name("localhost");
        if let Some(name) = identity {
            tls = tls.identity(Identity::from_pem(
                read(format!("{name}.pem")),
                read(format!("{name}.key")),
            ));
        }
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
    }
}

fn client(channel: Channel, user: &str) -> Client {
    ChatRoomServiceClient::with_interceptor(channel, UserHeader::new(user))
}

/// Whether a call over `channel` (if it connected at all) is answered.
async fn answers(channel: Result<Channel, tonic::transport::Error>) -> bool {
    let Ok(channel) = channel else { return false };
    client(channel, "probe")
        .list_rooms(pb::ListRoomsRequest::default())
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_client_certificates_are_required_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "ca");
    ca(d, "other-ca");
    leaf(d, "server", "ca", "serverAuth");
    leaf(d, "client", "ca", "clientAuth");
    leaf(d, "stranger", "other-ca", "clientAuth");

    // TLS only.
    let server = TlsServer::start(d, &[]).await;
    assert!(
        answers(server.connect(d, "ca", None).await).await,
        "TLS with the CA"
    );
    assert!(
        !answers(server.connect(d, "other-ca", None).await).await,
        "an untrusted server certificate"
    );
    let plaintext = Endpoint::from_shared(format!("http://127.0.0.1:{}", server.port))
        .unwrap()
        .connect()
        .await;
    assert!(
        !answers(plaintext).await,
        "plaintext is not served with TLS on"
    );
    drop(server);

    // mTLS: a certificate from the client CA, and nothing else.
    let ca_pem = d.join("ca.pem");
    let server = TlsServer::start(d, &["--tls-client-ca", ca_pem.to_str().unwrap()]).await;
    assert!(
        answers(server.connect(d, "ca", Some("client")).await).await,
        "a client certificate from the CA"
    );
    assert!(
        !answers(server.connect(d, "ca", None).await).await,
        "no client certificate"
    );
    assert!(
        !answers(server.connect(d, "ca", Some("stranger")).await).await,
        "a client certificate from another CA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_without_dropping_connections() {
    reload_without_dropping_connections(true).await
}

/// No signal: the server sees the files change (a renewal tool, a secret volume).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_when_their_files_change() {
    reload_without_dropping_connections(false).await
}

async fn reload_without_dropping_connections(signal: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "ca");
    ca(d, "new-ca");
    leaf(d, "server", "ca", "serverAuth");
    leaf(d, "renewed", "new-ca", "serverAuth");
    let server = TlsServer::start(d, &[]).await;

    // A connection and a stream made before the reload.
    let mut alice = client(server.connect(d, "ca", None).await.unwrap(), "alice");
    alice.create_room(create("r")).await.unwrap();
    let mut sub = Sub::open(&mut alice).await;
    sub.attached("r", None).await;

    // The certificate is renewed (by another CA), and the server told or not.
    for ext in ["pem", "key"] {
        let renewed: PathBuf = d.join(format!("renewed.{ext}"));
        std::fs::copy(renewed, d.join(format!("server.{ext}"))).unwrap();
    }
    if signal {
        let pid = server.child.id().unwrap().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    // New connections get the new certificate...
    common::eventually("the renewed certificate served", true, || async {
        answers(server.connect(d, "new-ca", None).await).await
    })
    .await;
    assert!(
        !answers(server.connect(d, "ca", None).await).await,
        "the old one is gone for new connections"
    );
    // ...and the connection from before still works, its stream too.
    alice
        .send_message(chat("r", "after the reload"))
        .await
        .unwrap();
    assert_eq!(sub.chat_seqs_until(1).await, [1]);
}
