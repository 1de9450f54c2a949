#!/usr/bin/env python3
"""Tries the server's security from outside, with the tools its users have: tokens
minted with PyJWT, certificates made with the `openssl` command, calls made with
`grpcurl` (`-H 'authorization: Bearer …'`, `-cacert`, `-cert`/`-key`).

It starts the server binary three times on free ports:

1. `--auth jwt` with an HS256 secret, issuer and audience, TLS with client
   certificates (mTLS), and a send rate: every handshake that must fail fails, every
   token refusal has its status and reason, permitted calls (and a Subscribe stream)
   work, the `rooms` claim allows and refuses, a send over the rate gets a RetryInfo;
2. `--auth jwt --jwt-jwks-url` with a JWKS served here: an RS256 token by `kid`, an
   unknown `kid`, algorithm confusion, the provider going away;
3. the same with a provider that is not there at start.

    python3 scripts/outside_check.py --binary target/debug/chatroom --grpcurl grpcurl
"""

import argparse
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import jwt  # PyJWT
from cryptography.hazmat.primitives.asymmetric import rsa

SECRET = "a secret only the backend and chatroom know"
ISSUER = "https://auth.example.test"
AUDIENCE = "chatroom"
SVC = "chatroom.v1.ChatRoomService"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(d):
    """A CA, a server certificate for localhost, a client certificate, and a foreign
    CA with a client certificate of its own."""
    def ca(name):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-days", "1", "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.pem",
                "-subj", f"/CN={name}")

    def leaf(name, ca_name, ext):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr", "-subj", f"/CN={name}")
        with open(f"{d}/{name}.ext", "w") as f:
            f.write(ext)
        openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/{ca_name}.pem",
                "-CAkey", f"{d}/{ca_name}.key", "-CAcreateserial", "-days", "1",
                "-extfile", f"{d}/{name}.ext", "-out", f"{d}/{name}.pem")

    ca("ca")
    ca("foreign-ca")
    leaf("server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    leaf("client", "ca", "extendedKeyUsage=clientAuth\n")
    leaf("foreign-client", "foreign-ca", "extendedKeyUsage=clientAuth\n")


class Server:
    def __init__(self, binary, d, name, *flags):
        self.port = free_port()
        self.log = open(f"{d}/{name}.log", "w")
        self.proc = subprocess.Popen(
            [binary, "--listen", f"127.0.0.1:{self.port}",
             "--database-url", f"sqlite://{d}/{name}.db", "--log", "info", *flags],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"{name} did not start; see {self.log.name}")
                time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)


class Grpcurl:
    def __init__(self, exe, d):
        self.exe, self.d = exe, d

    def call(self, port, method, data, token=None, tls="mtls", headers=(), stdin=None):
        """Runs grpcurl; (True, output) on success, (False, status or error text)."""
        d = self.d
        args = [self.exe, "-format-error", "-connect-timeout", "3", "-max-time", "15"]
        args += {
            "mtls": ["-cacert", f"{d}/ca.pem", "-cert", f"{d}/client.pem", "-key", f"{d}/client.key"],
            "no-client-cert": ["-cacert", f"{d}/ca.pem"],
            "foreign-client": ["-cacert", f"{d}/ca.pem", "-cert", f"{d}/foreign-client.pem",
                               "-key", f"{d}/foreign-client.key"],
            "untrusted-server": ["-cacert", f"{d}/foreign-ca.pem", "-cert", f"{d}/client.pem",
                                 "-key", f"{d}/client.key"],
            "plaintext": ["-plaintext"],
        }[tls]
        if token is not None:
            args += ["-H", f"authorization: Bearer {token}"]
        for h in headers:
            args += ["-H", h]
        args += ["-d", "@" if stdin is not None else json.dumps(data),
                 f"localhost:{port}", f"{SVC}/{method}"]
        run = subprocess.run(args, input=stdin, capture_output=True, text=True)
        if run.returncode == 0:
            return True, run.stdout
        try:
            return False, json.loads(run.stdout or run.stderr)
        except json.JSONDecodeError:
            return False, (run.stdout + run.stderr).strip()


def reason_of(status):
    for detail in status.get("details", []) if isinstance(status, dict) else []:
        if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            return detail.get("reason")
    return None


CODES = {"UNAUTHENTICATED": 16, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8}
checks = 0


def expect_refused(outcome, code, reason, what):
    global checks
    ok, status = outcome
    assert not ok, f"{what}: expected {code} {reason}, the call passed: {status}"
    assert isinstance(status, dict), f"{what}: not a gRPC status: {status}"
    assert status.get("code") == CODES[code], f"{what}: expected {code}, got {status}"
    assert reason_of(status) == reason, f"{what}: expected {reason}, got {status}"
    checks += 1
    print(f"  ok  {what}: {code} {reason}")


def expect_ok(outcome, what):
    global checks
    ok, out = outcome
    assert ok, f"{what}: expected success, got {out}"
    checks += 1
    print(f"  ok  {what}")
    return json.loads(out) if out.strip().startswith("{") and out.count("\n{") == 0 else out


def expect_handshake_failure(outcome, what):
    global checks
    ok, out = outcome
    assert not ok, f"{what}: expected the connection to fail, it passed: {out}"
    assert not isinstance(out, dict) or out.get("code") == 14, f"{what}: {out}"
    checks += 1
    print(f"  ok  {what}: refused ({str(out).splitlines()[0][:90]})")


def hs(claims, secret=SECRET, algorithm="HS256", headers=None):
    return jwt.encode(claims, secret, algorithm=algorithm, headers=headers)


def claims(sub, **extra):
    c = {"sub": sub, "exp": int(time.time()) + 3600, "iss": ISSUER, "aud": AUDIENCE}
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def tls_and_tokens(binary, g, d, rsa_key):
    print("server 1: --auth jwt (HS256, issuer, audience), mTLS, --send-rate 1 --send-burst 2")
    s = Server(binary, d, "tls", "--auth", "jwt", "--jwt-secret", SECRET,
               "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE,
               "--tls-cert", f"{d}/server.pem", "--tls-key", f"{d}/server.key",
               "--tls-client-ca", f"{d}/ca.pem", "--send-rate", "1", "--send-burst", "2")
    try:
        alice = hs(claims("alice", name="Alice"))
        room = {"room_id": "lobby", "name": "Lobby"}
        # Transport: every handshake that must fail, fails.
        expect_handshake_failure(g.call(s.port, "CreateRoom", room, alice, tls="plaintext"),
                                 "plaintext to a TLS port")
        expect_handshake_failure(g.call(s.port, "CreateRoom", room, alice, tls="no-client-cert"),
                                 "no client certificate")
        expect_handshake_failure(g.call(s.port, "CreateRoom", room, alice, tls="foreign-client"),
                                 "a client certificate of another CA")
        expect_handshake_failure(g.call(s.port, "CreateRoom", room, alice, tls="untrusted-server"),
                                 "a server certificate the client does not trust")
        # Tokens: each refusal with its reason.
        now = int(time.time())
        refusals = [
            (None, "TOKEN_MISSING", "no token"),
            ("not-a-jwt", "TOKEN_MALFORMED", "a malformed token"),
            (hs(claims("alice", exp=now - 60)), "TOKEN_EXPIRED", "an expired token"),
            (hs(claims("alice", nbf=now + 600)), "TOKEN_NOT_YET_VALID", "a token not valid yet"),
            (hs(claims("alice"), secret="another secret entirely, same length"),
             "TOKEN_SIGNATURE_INVALID", "a token signed with another secret"),
            (jwt.encode(claims("alice"), None, algorithm="none"), "TOKEN_ALGORITHM_REFUSED",
             "alg: none"),
            (jwt.encode(claims("alice"), rsa_key, algorithm="RS256"), "TOKEN_ALGORITHM_REFUSED",
             "an RS256 token against an HS256 secret"),
            (hs(claims("alice", iss="https://evil.example")), "TOKEN_ISSUER_INVALID",
             "another issuer"),
            (hs(claims("alice", aud="another-service")), "TOKEN_AUDIENCE_INVALID",
             "another audience"),
            (hs(claims("alice", exp=None)), "TOKEN_CLAIMS_INVALID", "no exp"),
        ]
        for token, reason, what in refusals:
            expect_refused(g.call(s.port, "CreateRoom", room, token), "UNAUTHENTICATED", reason, what)
        # `x-user-id` is ignored with --auth jwt.
        expect_refused(g.call(s.port, "CreateRoom", room, None, headers=["x-user-id: alice"]),
                       "UNAUTHENTICATED", "TOKEN_MISSING", "x-user-id without a token")
        # Permitted calls work; the token decides who calls, not x-user-id.
        created = expect_ok(g.call(s.port, "CreateRoom", room, alice, headers=["x-user-id: mallory"]),
                            "CreateRoom with a valid token")
        assert created["room"]["ownerId"] == "alice", created
        members = expect_ok(g.call(s.port, "ListMembers", {"room_id": "lobby"}, alice),
                            "ListMembers as the owner")
        assert [m["displayName"] for m in members["members"]] == ["Alice"], members
        # The rooms claim. The README's walkthrough: EnterRoom on a room that does not
        # exist yet (JoinRoom would be NOT_FOUND there).
        viewer = hs(claims("viewer-17", rooms=["live-42*"]))
        expect_ok(g.call(s.port, "EnterRoom", {"room_id": "live-42"}, viewer),
                  "EnterRoom within the token's rooms, the room new")
        expect_refused(g.call(s.port, "JoinRoom", {"room_id": "lobby"}, viewer),
                       "PERMISSION_DENIED", "ROOM_NOT_IN_TOKEN", "JoinRoom outside the token's rooms")
        expect_refused(g.call(s.port, "GetRoom", {"room_id": "lobby"}, viewer),
                       "PERMISSION_DENIED", "ROOM_NOT_IN_TOKEN", "GetRoom outside the token's rooms")
        # A Subscribe stream: attach, ping, detach; then the client closes its side.
        frames = "\n".join(json.dumps(f) for f in [
            {"request_id": "a", "attach": {"room_id": "live-42"}},
            {"request_id": "p", "ping": {}},
            {"request_id": "x", "attach": {"room_id": "lobby"}},
            {"request_id": "d", "detach": {"room_id": "live-42"}},
        ])
        out = expect_ok(g.call(s.port, "Subscribe", None, viewer, stdin=frames),
                        "Subscribe: attach, ping, detach")
        assert '"attached"' in out and '"pong"' in out and '"detached"' in out, out
        assert '"ROOM_NOT_IN_TOKEN"' in out, f"the attach of lobby is refused on the stream: {out}"
        # The send rate: a burst of two passes, the third waits, with a RetryInfo.
        for i in range(2):
            expect_ok(g.call(s.port, "SendMessage", {"room_id": "lobby", "text": f"m{i}"}, alice),
                      f"send {i + 1} of the burst")
        ok, status = g.call(s.port, "SendMessage", {"room_id": "lobby", "text": "over"}, alice)
        expect_refused((ok, status), "RESOURCE_EXHAUSTED", "RATE_LIMITED", "a send over the rate")
        retry = [x for x in status["details"] if x["@type"].endswith("google.rpc.RetryInfo")]
        assert retry and retry[0]["retryDelay"].endswith("s"), status
        time.sleep(float(retry[0]["retryDelay"][:-1]) + 0.1)
        expect_ok(g.call(s.port, "SendMessage", {"room_id": "lobby", "text": "later"}, alice),
                  "a send after the RetryInfo delay")
        history = expect_ok(g.call(s.port, "ListMessages", {"room_id": "lobby"}, alice),
                            "ListMessages")
        texts = [m["text"] for m in sorted(history["messages"], key=lambda m: int(m["seq"]))]
        assert texts == ["m0", "m1", "later"], history
    finally:
        s.stop()


class Jwks(http.server.BaseHTTPRequestHandler):
    document = b"{}"
    fetches = 0

    def do_GET(self):
        type(self).fetches += 1
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.document)))
        self.end_headers()
        self.wfile.write(self.document)

    def log_message(self, *args):
        pass


def jwks_keys(binary, g, d, rsa_key):
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk.update({"kid": "key-1", "alg": "RS256", "use": "sig"})
    Jwks.document = json.dumps({"keys": [jwk]}).encode()
    provider = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=provider.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{provider.server_address[1]}/.well-known/jwks.json"

    print("server 2: --auth jwt --jwt-jwks-url (a JWKS served here)")
    s = Server(binary, d, "jwks", "--auth", "jwt", "--jwt-jwks-url", url)
    started = time.time()
    try:
        rs = lambda sub, kid: jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, rsa_key,
                                         algorithm="RS256", headers={"kid": kid})
        expect_ok(g.call(s.port, "CreateRoom", {"room_id": "r"}, rs("alice", "key-1"), tls="plaintext"),
                  "an RS256 token whose kid is in the JWKS")
        expect_refused(g.call(s.port, "GetRoom", {"room_id": "r"}, rs("alice", "key-9"), tls="plaintext"),
                       "UNAUTHENTICATED", "TOKEN_KEY_UNKNOWN", "an unknown kid")
        confused = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600},
                              jwk["n"], algorithm="HS256", headers={"kid": "key-1"})
        expect_refused(g.call(s.port, "GetRoom", {"room_id": "r"}, confused, tls="plaintext"),
                       "UNAUTHENTICATED", "TOKEN_ALGORITHM_REFUSED",
                       "an HS256 token made with the published key")
        assert Jwks.fetches == 1, f"fetched {Jwks.fetches} times within 10 s"
        # The provider goes away: the key fetched keeps working; a new kid, once a
        # refetch is allowed again, is refused as unavailable.
        provider.shutdown()
        provider.server_close()
        time.sleep(max(0.0, started + 10.5 - time.time()))
        expect_ok(g.call(s.port, "GetRoom", {"room_id": "r"}, rs("alice", "key-1"), tls="plaintext"),
                  "the fetched key with the provider gone")
        expect_refused(g.call(s.port, "GetRoom", {"room_id": "r"}, rs("alice", "key-2"), tls="plaintext"),
                       "UNAUTHENTICATED", "TOKEN_KEYS_UNAVAILABLE", "a new kid with the provider gone")
    finally:
        s.stop()

    print("server 3: --jwt-jwks-url to a provider that is not there")
    s = Server(binary, d, "jwks-down", "--auth", "jwt", "--jwt-jwks-url",
               f"http://127.0.0.1:{free_port()}/jwks.json")
    try:
        expect_refused(g.call(s.port, "GetRoom", {"room_id": "r"}, rs("alice", "key-1"), tls="plaintext"),
                       "UNAUTHENTICATED", "TOKEN_KEYS_UNAVAILABLE", "the JWKS unreachable at start")
    finally:
        s.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default="target/debug/chatroom")
    ap.add_argument("--grpcurl", default="grpcurl")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatroom-outside-") as d:
        make_certificates(d)
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        g = Grpcurl(args.grpcurl, d)
        tls_and_tokens(args.binary, g, d, rsa_key)
        jwks_keys(args.binary, g, d, rsa_key)
    print(f"outside check: {checks} checks held")


if __name__ == "__main__":
    sys.exit(main())
