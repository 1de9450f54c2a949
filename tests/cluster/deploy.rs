//! The deployment examples under `deploy/` run as written: every variable in their env
//! files is a flag's environment twin, the two cluster nodes start from theirs against
//! the NATS configured by `deploy/nats/nats-server.conf` (its user and password), and a
//! message sent through one node reaches a stream on the other, with tokens minted by
//! `chatroom token` from the same secret file. Only what is machine-specific is
//! replaced: addresses and ports, the database, the secret file's path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Nats;
use crate::common::{self, Backend, Sub, TestDb, TestServer};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// The variables an env file sets, in order of the file.
fn env_file(name: &str) -> BTreeMap<String, String> {
    let path = Path::new(DEPLOY).join("env").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: not KEY=VALUE: {line}", path.display()));
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// The environment variables the binary reads, as `chatroom --help` lists them.
fn known_variables() -> Vec<String> {
    let help = std::process::Command::new(common::binary("chatroom"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    help.split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap().to_string())
        .collect()
}

#[test]
fn every_variable_of_the_env_files_is_a_flag() {
    let known = known_variables();
    assert!(known.len() > 40, "{known:?}");
    for file in ["single.env", "node-a.env", "node-b.env"] {
        for key in env_file(file).keys() {
            assert!(known.contains(key), "{file}: {key} is no flag's variable");
        }
    }
}

/// A node started from `file`'s variables, with `replaced` instead of theirs.
struct Node {
    _child: tokio::process::Child,
    server: TestServer,
}

async fn start(file: &str, replaced: &[(&str, String)]) -> Node {
    let mut vars = env_file(file);
    for (key, value) in replaced {
        assert!(vars.contains_key(*key), "{file} sets {key}");
        vars.insert(key.to_string(), value.clone());
    }
    let port = common::free_port();
    vars.insert("CHATROOM_LISTEN".into(), format!("127.0.0.1:{port}"));
    vars.insert(
        "CHATROOM_METRICS_LISTEN".into(),
        format!("127.0.0.1:{}", common::free_port()),
    );
    vars.insert("CHATROOM_LOG".into(), "warn".into());
    let child = tokio::process::Command::new(common::binary("chatroom"))
        .env_clear()
        .envs(&vars)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let server = TestServer::external(format!("127.0.0.1:{port}").parse().unwrap()).await;
    Node {
        _child: child,
        server,
    }
}

/// `chatroom token` for `sub`, with the secret in `secret_file`.
fn mint(secret_file: &Path, sub: &str) -> String {
    let output = std::process::Command::new(common::binary("chatroom"))
        .args(["token", "--sub", sub, "--jwt-secret-file"])
        .arg(secret_file)
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn secret_file(dir: &Path) -> PathBuf {
    let path = dir.join("jwt-secret");
    std::fs::write(&path, "a secret for the deploy test\n").unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_node_example_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let db = TestDb::new(Backend::Postgres).await;
    // The example's NATS configuration, on a port of the test's own: the nodes log in
    // with the user and password their env files carry.
    let nats = Nats::start_with(Path::new(DEPLOY).join("nats/nats-server.conf"));
    let replaced = |file| {
        let nats_url = env_file(file)["CHATROOM_NATS_URL"].replace("4222", &nats.port.to_string());
        vec![
            ("DATABASE_URL", db.url.clone()),
            ("CHATROOM_NATS_URL", nats_url),
            ("CHATROOM_JWT_SECRET_FILE", secret.display().to_string()),
        ]
    };
    let a = start("node-a.env", &replaced("node-a.env")).await;
    let b = start("node-b.env", &replaced("node-b.env")).await;

    let token = mint(&secret, "alice");
    let mut alice_a = a.server.token_client(&token);
    alice_a
        .create_room(common::create("deployed"))
        .await
        .expect("a call with a minted token");
    let mut alice_b = b.server.token_client(&token);
    let mut sub = Sub::open(&mut alice_b).await;
    sub.attached("deployed", Some(0)).await;
    for text in ["one", "two"] {
        alice_a
            .send_message(common::chat("deployed", text))
            .await
            .unwrap();
    }
    assert_eq!(sub.chat_seqs_until(2).await, [1, 2], "sent on a, seen on b");
    // Without a token the nodes refuse: the example verifies identities.
    let mut anonymous = b.server.anonymous().await;
    let refused = anonymous
        .get_room(chatroom::pb::GetRoomRequest {
            room_id: "deployed".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_node_example_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let file = dir.path().join("chatroom.db");
    let node = start(
        "single.env",
        &[
            ("DATABASE_URL", format!("sqlite://{}", file.display())),
            ("CHATROOM_JWT_SECRET_FILE", secret.display().to_string()),
        ],
    )
    .await;
    let mut bob = node.server.token_client(&mint(&secret, "bob"));
    bob.create_room(common::create("solo")).await.unwrap();
    assert!(
        file.exists(),
        "history in the SQLite file the env file names"
    );
}
