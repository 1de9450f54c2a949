#!/usr/bin/env python3
"""Replays each seed product's room flow against a running chatroom server, with a
Python client generated from proto/chatroom/v1/chatroom.proto (grpcio-tools).

It shows the contract is usable from another language: every room flow of the products
this service stands in for (the table in README.md) — NetEase NERoom, LeanCloud, ZEGO
ZIM, ZEGO multi-room, socket.io rooms — is expressed with generated stubs only, and
checked. Room ids carry a per-run prefix, so it can run
against any database. Exit status 0 means every flow held.

    python3 scripts/seed_flows.py --target 127.0.0.1:50051
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


class Client:
    """Unary calls as one user."""

    def __init__(self, channel, user):
        self.stub = pb_grpc.ChatRoomServiceStub(channel)
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
    """A Subscribe stream: frames go out through a queue, events come back through one."""

    def __init__(self, channel, user):
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


def neroom(ch, p):
    """NetEase NERoom chatroom: join/leave, everyone is told, no member limit, text."""
    host, guest, late = Client(ch, p + "host"), Client(ch, p + "guest"), Client(ch, p + "late")
    room = p + "neroom"
    host.CreateRoom(room_id=room, name="NERoom", display_name="Host")
    s = Stream(ch, p + "host")
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


def leancloud(ch, p):
    """LeanCloud: create with name + attributes, query by id and by name, one room at a
    time (switching), member events omitted, barrage as low priority."""
    a, b = Client(ch, p + "lc-a"), Client(ch, p + "lc-b")
    name = p + "LeanCloud"
    a.CreateRoom(room_id=p + "lc1", name=name, attributes={"level": "1"},
                 settings=pb.RoomSettings(member_events=pb.MEMBER_EVENTS_NONE))
    a.CreateRoom(room_id=p + "lc2", name=name + "-2")
    assert a.GetRoom(room_id=p + "lc1").room.attributes["level"] == "1"
    assert [r.room_id for r in b.ListRooms(name=name).rooms] == [p + "lc1"]
    s = Stream(ch, p + "lc-a")
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


def zim(ch, p):
    """ZEGO ZIM: create fails if the id exists, join fails if it does not, enter creates
    or joins atomically, the room is destroyed some time after it empties."""
    owner = Client(ch, p + "zim-owner")
    room = p + "zim"
    owner.CreateRoom(room_id=room, settings=pb.RoomSettings(
        destroy_when_empty_after={"seconds": 1}))
    expect_error(grpc.StatusCode.ALREADY_EXISTS, "ROOM_EXISTS", owner.CreateRoom, room_id=room)
    expect_error(grpc.StatusCode.NOT_FOUND, "ROOM_NOT_FOUND", owner.JoinRoom, room_id=p + "none")
    fresh = p + "zim-enter"
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda i: Client(ch, f"{p}zim-u{i}").EnterRoom(room_id=fresh), range(10)))
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


def multi_room(ch, p):
    """ZEGO multi-room: one user in several rooms at once, events tagged by room, a limit,
    switching, broadcast / barrage / custom command to chosen users, room extra info
    with update events, leaving one room or all."""
    host, viewer, other = Client(ch, p + "mr-host"), Client(ch, p + "mr-viewer"), Client(ch, p + "mr-other")
    rooms = [p + f"mr{i}" for i in range(3)]
    for r in rooms:
        host.CreateRoom(room_id=r)
        viewer.JoinRoom(room_id=r)
        other.JoinRoom(room_id=r)
    s = Stream(ch, p + "mr-viewer")
    for r in rooms:
        s.attach(r)
    o = Stream(ch, p + "mr-other")
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


def socketio(ch, p):
    """socket.io rooms: join with a nickname, the room is told, send to the room,
    disconnecting leaves (presence)."""
    owner, nick = Client(ch, p + "sio-owner"), Client(ch, p + "sio-nick")
    room = p + "sio"
    owner.CreateRoom(room_id=room, settings=pb.RoomSettings(presence_timeout={"nanos": 500_000_000}))
    s = Stream(ch, p + "sio-owner")
    s.attach(room)
    nick.JoinRoom(room_id=room, display_name="neo")
    assert s.event("members_joined")[0].members_joined.members[0].display_name == "neo"
    n = Stream(ch, p + "sio-nick")
    n.attach(room)
    nick.SendMessage(room_id=room, text="hi all")
    assert s.message("hi all")[0].message.sender_name == "neo"
    n.close()  # disconnect
    left = s.event("members_left")[0].members_left
    assert [m.user_id for m in left.members] == [p + "sio-nick"]
    s.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    args = parser.parse_args()
    channel = grpc.insecure_channel(args.target)
    grpc.channel_ready_future(channel).result(timeout=WAIT)
    prefix = "seed-" + uuid.uuid4().hex[:8] + "-"
    flows = [neroom, leancloud, zim, multi_room, socketio]
    for flow in flows:
        started = time.time()
        flow(channel, prefix)
        print(f"ok   {flow.__name__:<11} {flow.__doc__.splitlines()[0]} ({time.time() - started:.2f}s)")
    print(f"seed flows: {len(flows)} passed, 0 failed")


if __name__ == "__main__":
    main()
