//! `chatroom token`, run as a user runs it: a token it mints is accepted by a server
//! with the same secret, issuer and audience, and grants what its flags said;
//! `--check` says why a token is refused, with the reason a client would see.

use std::process::{Output, Stdio};

use jsonwebtoken::Algorithm;
use serde_json::json;
use tonic::Code;

use crate::common::{self, Backend, assert_error, create};
use crate::{AUDIENCE, ISSUER, SECRET, claims, hs256, jwt_app, now, token, with};

fn secret() -> &'static str {
    std::str::from_utf8(SECRET).unwrap()
}

/// Runs `chatroom token` with `args`, the server's key in the environment (as a shell
/// set up to run the server has it), `stdin` on its standard input.
async fn chatroom_token(args: &[&str], stdin: &str) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(common::binary("chatroom"))
        .arg("token")
        .args(args)
        .env("CHATROOM_JWT_SECRET", secret())
        .env("CHATROOM_JWT_ISSUER", ISSUER)
        .env("CHATROOM_JWT_AUDIENCE", AUDIENCE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chatroom token");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// `chatroom token ARGS --check TOKEN`: its exit code and what it printed.
async fn check(token: &str, args: &[&str]) -> (i32, String) {
    let output = chatroom_token(&[args, &["--check", token]].concat(), "").await;
    let printed = text(&output.stdout) + &text(&output.stderr);
    (output.status.code().unwrap(), printed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_token_is_accepted_and_grants_what_it_says() {
    let app = jwt_app(Backend::Sqlite).await;
    let output = chatroom_token(
        &[
            "--sub",
            "alice",
            "--name",
            "Alice A.",
            "--rooms",
            "lobby,team-*",
        ],
        "",
    )
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let minted = text(&output.stdout).trim().to_string();
    assert_eq!(
        minted.split('.').count(),
        3,
        "one JWT on one line: {minted}"
    );

    let mut alice = app.server().token_client(&minted);
    let room = alice
        .create_room(create("team-7"))
        .await
        .expect("a room the token names")
        .into_inner()
        .room
        .unwrap();
    assert_eq!(room.owner_id, "alice", "sub is the user");
    let status = alice.create_room(create("elsewhere")).await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "ROOM_NOT_IN_TOKEN");
    let members = common::all_members(&mut alice, "team-7").await;
    assert_eq!(
        members[0].display_name, "Alice A.",
        "the name claim names the owner"
    );

    let admin = chatroom_token(&["--sub", "ops", "--roles", "admin"], "").await;
    let (code, printed) = check(text(&admin.stdout).trim(), &[]).await;
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("admin: yes"), "{printed}");

    // --check describes the minted token.
    let (code, printed) = check(&minted, &[]).await;
    assert_eq!(code, 0, "{printed}");
    for line in [
        "accepted",
        "sub: alice",
        "admin: no",
        "name: Alice A.",
        "rooms: lobby, team-*",
    ] {
        assert!(printed.contains(line), "{line:?} in {printed}");
    }
    let expires: u64 = printed
        .lines()
        .find_map(|line| line.strip_prefix("expires: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|at| at.parse().ok())
        .unwrap_or_else(|| panic!("an expiry in {printed}"));
    let left = expires - now();
    assert!(
        (3590..=3600).contains(&left),
        "an hour by default: {left} s"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_why_a_token_is_refused() {
    let expired = token(&with(claims("alice"), json!({ "exp": now() - 60 })));
    let (code, printed) = check(&expired, &[]).await;
    assert_eq!(code, 1, "{printed}");
    assert!(printed.starts_with("refused: TOKEN_EXPIRED"), "{printed}");

    let forged = hs256(&claims("alice"), b"another secret");
    let (code, printed) = check(&forged, &[]).await;
    assert_eq!(code, 1);
    assert!(
        printed.starts_with("refused: TOKEN_SIGNATURE_INVALID"),
        "{printed}"
    );

    let other_audience = token(&with(claims("alice"), json!({ "aud": "elsewhere" })));
    let (code, printed) = check(&other_audience, &[]).await;
    assert_eq!(code, 1);
    assert!(
        printed.starts_with("refused: TOKEN_AUDIENCE_INVALID"),
        "{printed}"
    );

    // A token minted without the server's audience (flags override the environment).
    let output = chatroom_token(&["--sub", "bob", "--jwt-audience", "elsewhere"], "").await;
    let (code, printed) = check(text(&output.stdout).trim(), &[]).await;
    assert_eq!(code, 1);
    assert!(printed.contains("TOKEN_AUDIENCE_INVALID"), "{printed}");

    // From standard input, as `… | chatroom token --check -`.
    let good = token(&claims("carol"));
    let output = chatroom_token(&["--check", "-"], &format!("{good}\n")).await;
    assert!(output.status.success(), "{}", text(&output.stdout));
    assert!(text(&output.stdout).contains("sub: carol"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_uses_a_public_key_as_the_server_would() {
    let dir = tempfile::tempdir().unwrap();
    let pair = crate::keys::key_pair(dir.path(), "ed", "ED25519");
    let public = pair.public.to_str().unwrap();
    let signed = crate::keys::signed(Algorithm::EdDSA, &pair);
    let output = tokio::process::Command::new(common::binary("chatroom"))
        .args(["token", "--jwt-public-key", public, "--check", &signed])
        .args(["--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    assert!(text(&output.stdout).contains("sub: alice"));
    // An HS256 token "signed" with the public key's text is refused by its algorithm.
    let confused = hs256(&claims("alice"), &std::fs::read(&pair.public).unwrap());
    let output = tokio::process::Command::new(common::binary("chatroom"))
        .args(["token", "--jwt-public-key", public, "--check", &confused])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stdout).contains("TOKEN_ALGORITHM_REFUSED"));
    // Two keys at once are refused, as the server refuses them.
    let output = tokio::process::Command::new(common::binary("chatroom"))
        .args(["token", "--jwt-public-key", public, "--check", &signed])
        .env("CHATROOM_JWT_SECRET", "also a secret")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("give one key"),
        "{}",
        text(&output.stderr)
    );
    // Minting needs the secret: a public key cannot sign.
    let output = tokio::process::Command::new(common::binary("chatroom"))
        .args(["token", "--jwt-public-key", public, "--sub", "a"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("only HS256"),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_minted_is_refused_with_the_flag_named() {
    let cases: [(&[&str], &str); 4] = [
        (&["--sub", "alice", "--rooms", "has space"], "invalid rooms"),
        (&["--sub", ""], "invalid sub"),
        (&["--sub", "alice", "--ttl", "0s"], "invalid ttl"),
        (&["--sub", "alice", "--roles", "admin,"], "invalid roles"),
    ];
    for (args, expected) in cases {
        let output = chatroom_token(args, "").await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "no token printed for {args:?}");
        let error = text(&output.stderr);
        assert!(error.contains(expected), "{args:?}: {error}");
    }
    // No key at all.
    let output = tokio::process::Command::new(common::binary("chatroom"))
        .args(["token", "--sub", "alice"])
        .env_remove("CHATROOM_JWT_SECRET")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("--jwt-secret"));
    // --sub is required unless checking; the usage error is clap's (exit 2).
    let output = chatroom_token(&[], "").await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("--sub"),
        "{}",
        text(&output.stderr)
    );
}
