#!/usr/bin/env python3
"""Replays each seed product's room flow against a running chatroom server, with a
Python client generated from proto/chatroom/v1/chatroom.proto (grpcio-tools).

It shows the contract is usable from another language: every room flow of the products
this service stands in for (the table in README.md) — NetEase NERoom, LeanCloud, ZEGO
ZIM, ZEGO multi-room, socket.io rooms — is expressed with generated stubs only, and
checked. Room ids carry a per-run prefix, so it can run
against any database. Exit status 0 means every flow held.

Given several nodes of one cluster (`--target A,B`), each client and each stream
goes to the next node in turn, so every flow crosses nodes: a stream on one node sees
what calls through another did. A last flow then checks what only a cluster has:
presence counted over nodes, one idempotency key sent through two nodes at once, the
member limit under joins through both.

    python3 scripts/seed_flows.py --target 127.0.0.1:50051
    python3 scripts/seed_flows.py --target 127.0.0.1:50051,127.0.0.1:50052
"""

import argparse
import concurrent.futures
import importlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 10.0


def generate_stubs():
    """Generates the Python client from the proto, the way any client project would."""
    out = tempfile.mkdtemp(prefix="chatroom-py-")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}/proto",
         f"--python_out={out}", f"--grpc_python_out={out}", "chatroom/v1/chatroom.proto"],
        check=True)
    for d in ("chatroom", "chatroom/v1"):
        open(os.path.join(out, d, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    return (importlib.import_module("chatroom.v1.chatroom_pb2"),
            importlib.import_module("chatroom.v1.chatroom_pb2_grpc"))


pb, pb_grpc = generate_stubs()


class Nodes:
    """The servers to talk to: one, or several nodes of a cluster, handed out in turn."""

    def __init__(self, channels):
        self.channels = channels
        self.turn = 0

    def pick(self):
        channel = self.channels[self.turn % len(self.channels)]
        self.turn += 1
        return channel


class Client:
    """Unary calls as one user (through the next node)."""

    def __init__(self, nodes, user, channel=None):
        self.stub = pb_grpc.ChatRoomServiceStub(channel or nodes.pick())
        self.user = user
        self.md = [("x-user-id", user)]

    def __getattr__(self, rpc):
        method = getattr(self.stub, rpc)
        request_type = getattr(pb, rpc + "Request")
        return lambda **fields: method(request_type(**fields), metadata=self.md, timeout=WAIT)


def reason_of(error):
    """The ErrorInfo reason of a failed call."""
    status = rpc_status.from_call(error)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "chatroom", info
            return info.reason
    raise AssertionError(f"no ErrorInfo in {error}")


def expect_error(code, reason, call, **fields):
    try:
        call(**fields)
    except grpc.RpcError as e:
        assert e.code() == code, (e.code(), e.details())
        assert reason_of(e) == reason, (reason_of(e), reason)
        return
    raise AssertionError(f"expected {code} {reason}")


class Stream:
    """A Subscribe stream (to the next node): frames go out through a queue, events
    come back through one."""

    def __init__(self, nodes, user, channel=None):
        channel = channel or nodes.pick()
        self.out = queue.Queue()
        self.events = queue.Queue()
        self.n = 0

        def frames():
            while True:
                frame = self.out.get()
                if frame is None:
                    return
                yield frame

        stub = pb_grpc.ChatRoomServiceStub(channel)
        self.call = stub.Subscribe(frames(), metadata=[("x-user-id", user)])
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for response in self.call:
                self.events.put(response)
        except grpc.RpcError as e:
            self.events.put(e)

    def request(self, **frame):
        self.n += 1
        rid = f"r{self.n}"
        self.out.put(pb.SubscribeRequest(request_id=rid, **frame))
        return rid

    def next(self):
        item = self.events.get(timeout=WAIT)
        if isinstance(item, Exception):
            raise item
        return item

    def until(self, predicate):
        """Reads until a response matches; returns it and the ones before."""
        skipped = []
        deadline = time.time() + WAIT
        while time.time() < deadline:
            r = self.next()
            if predicate(r):
                return r, skipped
            skipped.append(r)
        raise AssertionError("timed out waiting for an event")

    def answer(self, rid):
        return self.until(lambda r: r.request_id == rid)[0]

    def attach(self, room_id, after_seq=None):
        attach = pb.AttachRoom(room_id=room_id)
        if after_seq is not None:
            attach.after_seq = after_seq
        r = self.answer(self.request(attach=attach))
        assert r.WhichOneof("event") == "attached", r
        return r.attached.room

    def message(self, text):
        return self.until(lambda r: r.WhichOneof("event") == "message" and r.message.text == text)

    def event(self, kind):
        return self.until(lambda r: r.WhichOneof("event") == kind)

    def ping_drain(self):
        """Everything before the answer to a ping."""
        rid = self.request(ping=pb.Ping())
        return self.until(lambda r: r.request_id == rid)[1]

    def close(self):
        self.out.put(None)
        self.call.cancel()


def neroom(nodes, p):
    """NetEase NERoom chatroom: join/leave, everyone is told, no member limit, text."""
    host, guest, late = Client(nodes, p + "host"), Client(nodes, p + "guest"), Client(nodes, p + "late")
    room = p + "neroom"
    host.CreateRoom(room_id=room, name="NERoom", display_name="Host")
    s = Stream(nodes, p + "host")
    s.attach(room)
    guest.JoinRoom(room_id=room, display_name="Guest")
    late.JoinRoom(room_id=room, display_name="Late")
    joined = []
    while len(joined) < 2:
        joined += [m.display_name for m in s.event("members_joined")[0].members_joined.members]
    assert sorted(joined) == ["Guest", "Late"], joined
    late.LeaveRoom(room_id=room)
    left = s.event("members_left")[0].members_left
    assert [m.user_id for m in left.members] == [p + "late"] and left.member_count == 2
    sent = guest.SendMessage(room_id=room, text="hello NERoom").message
    got = s.message("hello NERoom")[0].message
    assert got.seq == sent.seq == 1 and got.sender_name == "Guest"
    assert host.GetRoom(room_id=room).room.settings.max_members == 0  # no limit
    s.close()


def leancloud(nodes, p):
    """LeanCloud: create with name + attributes, query by id and by name, one room at a
    time (switching), member events omitted, barrage as low priority."""
    a, b = Client(nodes, p + "lc-a"), Client(nodes, p + "lc-b")
    name = p + "LeanCloud"
    a.CreateRoom(room_id=p + "lc1", name=name, attributes={"level": "1"},
                 settings=pb.RoomSettings(member_events=pb.MEMBER_EVENTS_NONE))
    a.CreateRoom(room_id=p + "lc2", name=name + "-2")
    assert a.GetRoom(room_id=p + "lc1").room.attributes["level"] == "1"
    assert [r.room_id for r in b.ListRooms(name=name).rooms] == [p + "lc1"]
    s = Stream(nodes, p + "lc-a")
    s.attach(p + "lc1")
    b.JoinRoom(room_id=p + "lc1")
    b.SwitchRoom(from_room_id=p + "lc1", to_room_id=p + "lc2")  # one room at a time
    assert b.GetRoom(room_id=p + "lc1").room.member_count == 1
    assert b.GetRoom(room_id=p + "lc2").room.member_count == 2
    b.JoinRoom(room_id=p + "lc1")
    b.SendMessage(room_id=p + "lc1", kind=pb.MESSAGE_KIND_BARRAGE, text="666")
    r, before = s.message("666")
    assert r.message.seq == 0
    kinds = {x.WhichOneof("event") for x in before}
    assert not kinds & {"members_joined", "members_left"}, kinds  # omitted
    assert not a.ListMessages(room_id=p + "lc1").messages  # barrage is not stored
    s.close()


def zim(nodes, p):
    """ZEGO ZIM: create fails if the id exists, join fails if it does not, enter creates
    or joins atomically, the room is destroyed some time after it empties."""
    owner = Client(nodes, p + "zim-owner")
    room = p + "zim"
    owner.CreateRoom(room_id=room, settings=pb.RoomSettings(
        destroy_when_empty_after={"seconds": 1}))
    expect_error(grpc.StatusCode.ALREADY_EXISTS, "ROOM_EXISTS", owner.CreateRoom, room_id=room)
    expect_error(grpc.StatusCode.NOT_FOUND, "ROOM_NOT_FOUND", owner.JoinRoom, room_id=p + "none")
    fresh = p + "zim-enter"
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda i: Client(nodes, f"{p}zim-u{i}").EnterRoom(room_id=fresh), range(10)))
    assert sum(a.created for a in answers) == 1
    assert owner.GetRoom(room_id=fresh).room.member_count == 10
    owner.LeaveRoom(room_id=room)
    deadline = time.time() + WAIT
    while time.time() < deadline:
        try:
            owner.GetRoom(room_id=room)
            time.sleep(0.1)
        except grpc.RpcError as e:
            assert reason_of(e) == "ROOM_NOT_FOUND"
            return
    raise AssertionError("the empty room was not destroyed")


def multi_room(nodes, p):
    """ZEGO multi-room: one user in several rooms at once, events tagged by room, a limit,
    switching, broadcast / barrage / custom command to chosen users, room extra info
    with update events, leaving one room or all."""
    host, viewer, other = Client(nodes, p + "mr-host"), Client(nodes, p + "mr-viewer"), Client(nodes, p + "mr-other")
    rooms = [p + f"mr{i}" for i in range(3)]
    for r in rooms:
        host.CreateRoom(room_id=r)
        viewer.JoinRoom(room_id=r)
        other.JoinRoom(room_id=r)
    s = Stream(nodes, p + "mr-viewer")
    for r in rooms:
        s.attach(r)
    o = Stream(nodes, p + "mr-other")
    o.attach(rooms[0])
    # Broadcast: reliable, with id and send time, tagged by room.
    for r in rooms:
        host.SendMessage(room_id=r, text="broadcast in " + r)
    for r in rooms:
        m = s.message("broadcast in " + r)[0].message
        assert m.room_id == r and m.message_id and m.sent_at.seconds > 0 and m.seq == 1
    # Custom command to chosen users only.
    host.SendMessage(room_id=rooms[0], kind=pb.MESSAGE_KIND_COMMAND, to_user_ids=[p + "mr-viewer"], text="cmd")
    assert s.message("cmd")[0].message.kind == pb.MESSAGE_KIND_COMMAND
    host.SendMessage(room_id=rooms[0], text="after cmd")
    _, before = o.message("after cmd")
    assert not any(x.WhichOneof("event") == "message" and x.message.text == "cmd" for x in before)
    # Room extra info and its update event.
    host.UpdateRoom(room_id=rooms[1], set_attributes={"stage": "live"})
    upd = s.event("room_updated")[0].room_updated.room
    assert upd.room_id == rooms[1] and upd.attributes["stage"] == "live"
    # Switch: the attached stream moves.
    spare = p + "mr-spare"
    host.CreateRoom(room_id=spare)
    viewer.SwitchRoom(from_room_id=rooms[2], to_room_id=spare)
    d = s.event("detached")[0].detached
    assert d.room_id == rooms[2] and d.reason == pb.DETACH_REASON_SWITCHED
    assert s.event("attached")[0].attached.room.room_id == spare
    # Too many rooms for one stream (the server allows 16 by default).
    extra = [p + f"mr-x{i}" for i in range(14)]
    for r in extra:
        viewer.CreateRoom(room_id=r)
    for r in extra[:13]:
        s.attach(r)
    r = s.answer(s.request(attach=pb.AttachRoom(room_id=extra[13])))
    assert r.WhichOneof("event") == "error" and r.error.reason == "TOO_MANY_ROOMS", r
    # Leave one room (detach) or all (close the stream).
    r = s.answer(s.request(detach=pb.DetachRoom(room_id=rooms[0])))
    assert r.detached.reason == pb.DETACH_REASON_REQUESTED
    s.close()
    o.close()


def socketio(nodes, p):
    """socket.io rooms: join with a nickname, the room is told, send to the room,
    disconnecting leaves (presence)."""
    owner, nick = Client(nodes, p + "sio-owner"), Client(nodes, p + "sio-nick")
    room = p + "sio"
    owner.CreateRoom(room_id=room, settings=pb.RoomSettings(presence_timeout={"nanos": 500_000_000}))
    s = Stream(nodes, p + "sio-owner")
    s.attach(room)
    nick.JoinRoom(room_id=room, display_name="neo")
    assert s.event("members_joined")[0].members_joined.members[0].display_name == "neo"
    n = Stream(nodes, p + "sio-nick")
    n.attach(room)
    nick.SendMessage(room_id=room, text="hi all")
    assert s.message("hi all")[0].message.sender_name == "neo"
    n.close()  # disconnect
    left = s.event("members_left")[0].members_left
    assert [m.user_id for m in left.members] == [p + "sio-nick"]
    s.close()


def eventually(what, expected, value):
    deadline = time.time() + WAIT
    while True:
        now = value()
        if now == expected:
            return
        assert time.time() < deadline, f"{what}: still {now!r}, expected {expected!r}"
        time.sleep(0.05)


def cluster(nodes, p):
    """Several nodes: presence over nodes, one key through two nodes, the member limit."""
    a, b = nodes.channels[0], nodes.channels[1]
    room = p + "cl"
    owner_a, owner_b = Client(nodes, p + "cl-owner", a), Client(nodes, p + "cl-owner", b)
    owner_a.CreateRoom(room_id=room, settings=pb.RoomSettings(max_members=6))
    watcher = Stream(nodes, p + "cl-owner", a)
    watcher.attach(room)
    guest = Client(nodes, p + "cl-guest", a)
    guest.JoinRoom(room_id=room)
    on_b = Stream(nodes, p + "cl-guest", b)
    on_b.attach(room)
    # A stream on each node: both count through either node.
    for owner in (owner_a, owner_b):
        eventually("online through each node", 2, lambda: owner.GetRoom(room_id=room).room.online_count)
        online = owner.ListMembers(room_id=room, online_only=True).members
        assert sorted(m.user_id for m in online) == [p + "cl-guest", p + "cl-owner"], online
    # One idempotency key through both nodes at once: one message, one seq.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        sent = list(pool.map(lambda o: o.SendMessage(room_id=room, text="once", client_msg_id="k1").message,
                             (owner_a, owner_b)))
    assert sent[0].seq == sent[1].seq and sent[0].message_id == sent[1].message_id, sent
    assert on_b.message("once")[0].message.seq == sent[0].seq
    assert len(owner_b.ListMessages(room_id=room).messages) == 1
    # Joins through both nodes for the last four places: four get in.
    joiners = [Client(nodes, f"{p}cl-j{i}", (a, b)[i % 2]) for i in range(10)]

    def join(client):
        try:
            client.JoinRoom(room_id=room)
            return "ok"
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason_of(e) == "ROOM_FULL", e
            return "full"
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(join, joiners))
    assert results.count("ok") == 4, results
    assert owner_b.GetRoom(room_id=room).room.member_count == 6
    # The guest leaves through A: its stream on B is detached.
    guest.LeaveRoom(room_id=room)
    detached = on_b.event("detached")[0].detached
    assert detached.room_id == room and detached.reason == pb.DETACH_REASON_LEFT, detached
    eventually("online after the leave", 1, lambda: owner_b.GetRoom(room_id=room).room.online_count)
    watcher.close()
    on_b.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051",
                        help="host:port of the server, or of each node of a cluster, comma-separated")
    args = parser.parse_args()
    channels = [grpc.insecure_channel(t) for t in args.target.split(",")]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=WAIT)
    nodes = Nodes(channels)
    prefix = "seed-" + uuid.uuid4().hex[:8] + "-"
    flows = [neroom, leancloud, zim, multi_room, socketio]
    if len(channels) > 1:
        flows.append(cluster)
    for flow in flows:
        started = time.time()
        flow(nodes, prefix)
        print(f"ok   {flow.__name__:<11} {flow.__doc__.splitlines()[0]} ({time.time() - started:.2f}s)")
    print(f"seed flows: {len(flows)} passed, 0 failed, on {len(channels)} node(s)")


if __name__ == "__main__":
    main()
