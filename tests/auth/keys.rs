//! Public keys of every kind the server takes (RSA, EC P-256, Ed25519), each
//! verifying tokens of its own algorithms only: a token that names another algorithm
//! — above all an HS256 token "signed" with the public key as its secret — is refused
//! before any signature is checked. Keys are made with the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::Command;

use chatroom::config::AuthMode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::Code;

use crate::common::{Backend, TestApp, assert_error, create};
use crate::{claims, hs256};

/// A key pair made by openssl: the private key (PKCS#8 PEM) and the public one.
pub(crate) struct KeyPair {
    pub(crate) private: PathBuf,
    pub(crate) public: PathBuf,
}

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .status()
        .expect("the openssl command (scripts/test.sh installs it)");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A new key pair of `algorithm` (`RSA`, `EC`, `ED25519`) in `dir`, named `name`.
pub(crate) fn key_pair(dir: &Path, name: &str, algorithm: &str) -> KeyPair {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let p = private.to_str().unwrap();
    match algorithm {
        "RSA" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p,
        ]),
        "EC" => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p,
        ]),
        other => openssl(&["genpkey", "-algorithm", other, "-out", p]),
    }
    openssl(&[
        "pkey",
        "-in",
        p,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    KeyPair { private, public }
}

pub(crate) fn signed(algorithm: Algorithm, key: &KeyPair) -> String {
    let pem = std::fs::read(&key.private).unwrap();
    let key = match algorithm {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        other => panic!("no test key for {other:?}"),
    }
    .unwrap();
    jsonwebtoken::encode(&Header::new(algorithm), &claims("alice"), &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_verify_their_own_algorithms_only() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, algorithm) in [
        ("RSA", Algorithm::RS256),
        ("RSA", Algorithm::PS256),
        ("EC", Algorithm::ES256),
        ("ED25519", Algorithm::EdDSA),
    ] {
        let name = format!("{kind}-{algorithm:?}");
        let key = key_pair(dir.path(), &name, kind);
        let stranger = key_pair(dir.path(), &format!("{name}-other"), kind);
        let public = key.public.clone();
        let app = TestApp::with(Backend::Sqlite, move |c| {
            c.auth = AuthMode::Jwt;
            c.jwt_public_key = Some(public.clone());
        })
        .await;
        let server = app.server();

        // Signed with the key: alice.
        let mut alice = server.token_client(&signed(algorithm, &key));
        let room = alice.create_room(create("r")).await.unwrap().into_inner();
        assert_eq!(room.room.unwrap().owner_id, "alice", "{name}");

        // Signed with another key of the same kind: the signature does not verify.
        let status = server
            .token_client(&signed(algorithm, &stranger))
            .get_room(chatroom::pb::GetRoomRequest {
                room_id: "r".into(),
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::Unauthenticated, "TOKEN_SIGNATURE_INVALID");

        // HS256 with the public key's bytes as the secret: the algorithm is refused.
        let forged = hs256(&claims("mallory"), &std::fs::read(&key.public).unwrap());
        let status = server
            .token_client(&forged)
            .get_room(chatroom::pb::GetRoomRequest {
                room_id: "r".into(),
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::Unauthenticated, "TOKEN_ALGORITHM_REFUSED");
    }
}
