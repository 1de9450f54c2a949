#!/usr/bin/env python3
"""chatroom_client against the real server binary: an application that writes no
reconnect or resume code loses nothing when the server dies under it.

    python clients/python/tests/test_client.py --binary target/debug/chatroom \
        --database-url postgres://postgres@127.0.0.1:5432/SCRATCH_DB [--nats-server PATH]

- a node killed (SIGKILL) and restarted while messages flow: the session and the
  sender see every acknowledged message once, in order;
- one of two cluster nodes killed: the session, and `python -m chatroom_client tail`,
  move to the other node and miss nothing;
- typed errors (reason, BadRequest fields), a rate-limited send that waits its
  RetryInfo, and a stream kept alive across token expiries by a token provider.

Each test starts its own servers on free ports; SQLite files live in a temporary
directory, the cluster uses the PostgreSQL database given (emptied first) and a
nats-server of its own. Exit status 0 when every check held.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import grpc  # noqa: E402

from chatroom_client import (ChatroomError, Client, Reconnecting, Resumed, pb)  # noqa: E402

WAIT = 30.0
ARGS = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The chatroom binary on a port of its own, killed with SIGKILL when asked."""

    def __init__(self, database_url, *flags, port=None):
        self.port = port or free_port()
        self.database_url, self.flags = database_url, flags
        self.process = None
        self.start()

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        self.process = subprocess.Popen(
            [ARGS.binary, "--listen", self.target, "--database-url", self.database_url,
             "--log", "error", *self.flags])

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait()


async def serving(target, **identity):
    """Waits until `target` answers calls."""
    deadline = time.monotonic() + WAIT
    async with Client(target, retry_for=0, **identity) as client:
        while True:
            try:
                await client.get_room("probe")
            except ChatroomError as error:
                if error.code != grpc.StatusCode.UNAVAILABLE:
                    return
            assert time.monotonic() < deadline, f"{target} did not start serving"
            await asyncio.sleep(0.1)


async def send_all(client, room_id, count, pause, on_sent=None):
    """Sends `count` messages one after another; returns their seqs as acknowledged."""
    seqs = []
    for i in range(count):
        message = await client.send(room_id, f"m{i}")
        assert message.text == f"m{i}"
        seqs.append(message.seq)
        if on_sent:
            await on_sent(i)
        await asyncio.sleep(pause)
    return seqs


async def collect(session, count, events=None):
    """The first `count` stored messages the session delivers (and every event into
    `events`)."""
    messages = []
    deadline = time.monotonic() + WAIT * 2

    async def gather():
        async for event in session:
            if events is not None:
                events.append(event)
            if isinstance(event, pb.Message) and event.seq:
                messages.append(event)
                if len(messages) == count:
                    return

    await asyncio.wait_for(gather(), deadline - time.monotonic())
    return messages


async def flow(sender, session, room_id, count, pause, on_sent=None):
    """Sends `count` messages while `session` receives them; then closes the session.
    Returns what it delivered, the seqs acknowledged, and every event."""
    events = []
    delivered = asyncio.ensure_future(collect(session, count, events))
    acked = await send_all(sender, room_id, count, pause, on_sent)
    messages = await delivered
    await session.close()
    return messages, acked, events


def assert_exactly_once(messages, acked, who):
    seqs = [m.seq for m in messages]
    assert seqs == sorted(set(seqs)), f"{who}: out of order or repeated: {seqs}"
    assert seqs == list(range(1, len(acked) + 1)), f"{who}: not 1..{len(acked)}: {seqs}"
    assert sorted(acked) == seqs, f"{who}: acknowledged {sorted(acked)}, delivered {seqs}"
    assert [m.text for m in messages] == [f"m{i}" for i in range(len(acked))], who


async def test_a_killed_and_restarted_node(tmp):
    db = f"sqlite://{tmp}/restart.db"
    server = Server(db)
    try:
        await serving(server.target, user="alice")
        count = 40
        async with Client(server.target, user="alice") as sender, \
                Client(server.target, user="alice") as reader:
            await sender.enter_room("r")
            session = reader.session()
            await session.attach("r", after_seq=0)

            async def kill_and_restart(i):
                if i == 12:
                    server.kill()
                    await asyncio.sleep(1.0)
                    server.start()

            messages, acked, events = await flow(sender, session, "r", count, 0.02, kill_and_restart)
        assert_exactly_once(messages, acked, "the session across a SIGKILL and restart")
        assert any(isinstance(e, Reconnecting) for e in events), "the stream did break"
        assert any(isinstance(e, Resumed) for e in events), "and was resumed"
    finally:
        server.stop()
    print(f"ok  SIGKILL and restart under a flow of {count}: every acknowledged message once, in order")


def tail(targets, room, user):
    return subprocess.Popen(
        [sys.executable, "-m", "chatroom_client", "tail", "--target", ",".join(targets),
         "--room", room, "--user", user, "--after-seq", "0"],
        cwd=os.path.dirname(HERE), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_lines(process, count, timeout):
    lines = []
    deadline = time.monotonic() + timeout
    while len(lines) < count and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(json.loads(line))
    return lines


async def test_a_killed_cluster_node(tmp):
    subprocess.run([ARGS.psql, ARGS.database_url, "-qc",
                    "DROP SCHEMA public CASCADE; CREATE SCHEMA public"], check=True,
                   stdout=subprocess.DEVNULL)
    nats_port = free_port()
    nats = subprocess.Popen([ARGS.nats_server, "-a", "127.0.0.1", "-p", str(nats_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flags = ("--nats-url", f"nats://127.0.0.1:{nats_port}", "--node-lease-ms", "1500")
    a = Server(ARGS.database_url, *flags)
    await serving(a.target, user="alice")
    b = Server(ARGS.database_url, *flags)
    watcher = None
    try:
        await serving(b.target, user="alice")
        count = 40
        async with Client([b.target, a.target], user="alice") as sender, \
                Client([a.target, b.target], user="bob") as reader:
            await sender.enter_room("c")
            await reader.join_room("c")
            async with Client(a.target, user="carol") as carol:
                await carol.join_room("c")
            watcher = tail([a.target, b.target], "c", "carol")
            session = reader.session()
            await session.attach("c", after_seq=0)
            assert reader.target == a.target

            async def kill_a(i):
                if i == 12:
                    a.kill()

            messages, acked, events = await flow(sender, session, "c", count, 0.02, kill_a)
        assert_exactly_once(messages, acked, "the session across a killed node")
        resumed = [e for e in events if isinstance(e, Resumed)]
        assert resumed and resumed[-1].target == b.target, f"resumed on the other node: {resumed}"
        lines = await asyncio.get_running_loop().run_in_executor(None, read_lines, watcher, count, WAIT)
        assert [(line["seq"], line["text"], line["sender_id"]) for line in lines] == \
            [(seq, f"m{seq - 1}", "alice") for seq in range(1, count + 1)], f"tail printed {lines}"
    finally:
        if watcher is not None:
            watcher.kill()
            stderr = watcher.communicate()[1]
            assert "resumed c after seq" in stderr, f"tail's account of the reconnect: {stderr}"
        a.stop()
        b.stop()
        nats.kill()
        nats.wait()
    print(f"ok  one of two nodes killed: the session and `tail` move to the other, {count} messages once each")


async def test_errors_and_rate_limits(tmp):
    server = Server(f"sqlite://{tmp}/errors.db", "--send-rate", "2", "--send-burst", "1")
    try:
        await serving(server.target, user="dave")
        async with Client(server.target, user="dave") as client:
            try:
                await client.join_room("missing")
                raise AssertionError("joined a room that does not exist")
            except ChatroomError as error:
                assert error.code == grpc.StatusCode.NOT_FOUND and error.reason == "ROOM_NOT_FOUND", error
                assert not error.retryable
            try:
                await client.create_room("no spaces allowed")
                raise AssertionError("created a room with a bad id")
            except ChatroomError as error:
                assert error.reason == "INVALID_ARGUMENT", error
                assert [f for f, _ in error.field_violations] == ["room_id"], error.field_violations
            await client.enter_room("limited")
            started = time.monotonic()
            seqs = [(await client.send("limited", f"s{i}")).seq for i in range(4)]
            elapsed = time.monotonic() - started
            assert seqs == [1, 2, 3, 4], seqs
            # A burst of 1 at 2/s: three of the four waited their RetryInfo (~0.5 s each).
            assert elapsed >= 1.2, f"four sends at 2/s took {elapsed:.2f}s"
            short = Client(server.target, user="dave", retry_for=0.1)
            await asyncio.sleep(0.6)  # the bucket holds one send again
            await short.send("limited", "x")
            try:
                await short.send("limited", "y")
                raise AssertionError("a rate-limited send within 0.1 s")
            except ChatroomError as error:
                assert error.reason == "RATE_LIMITED" and 0 < error.retry_after <= 1.0, error
            await short.close()
    finally:
        server.stop()
    print("ok  typed errors (reason, BadRequest field, RetryInfo), rate-limited sends wait and succeed")


async def test_tokens_are_refreshed(tmp):
    import jwt  # PyJWT: the token provider of an application
    secret = "a secret for the client tests, 32+ bytes long"
    server = Server(f"sqlite://{tmp}/tokens.db", "--auth", "jwt", "--jwt-secret", secret)
    minted = []

    def provider():
        minted.append(time.time())
        return jwt.encode({"sub": "erin", "exp": int(time.time()) + 3}, secret, algorithm="HS256")

    try:
        token = jwt.encode({"sub": "erin", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
        await serving(server.target, token=token)
        async with Client(server.target, token_provider=provider) as client:
            await client.enter_room("t")
            session = client.session()
            await session.attach("t", after_seq=0)
            count = 16
            messages, acked, events = await flow(client, session, "t", count, 1.0)
        assert_exactly_once(messages, acked, "a session on 3-second tokens")
        assert not any(isinstance(e, Reconnecting) for e in events), \
            f"the stream outlived its tokens without breaking: {events}"
        assert len(minted) >= 5, f"tokens minted: {len(minted)}"
    finally:
        server.stop()
    print(f"ok  a stream kept for {count} s on 3-second tokens ({len(minted)} minted), never broken")


async def main():
    with tempfile.TemporaryDirectory() as tmp:
        await test_errors_and_rate_limits(tmp)
        await test_a_killed_and_restarted_node(tmp)
        await test_a_killed_cluster_node(tmp)
        await test_tokens_are_refreshed(tmp)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL database the test may empty")
    parser.add_argument("--psql", default="psql")
    parser.add_argument("--nats-server", default="nats-server")
    ARGS = parser.parse_args()
    ARGS.binary = os.path.abspath(ARGS.binary)
    asyncio.run(main())
