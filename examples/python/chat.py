#!/usr/bin/env python3
"""From zero to a live room in Python: a client generated from the chatroom proto.

    pip install grpcio grpcio-tools
    python3 examples/python/chat.py --target 127.0.0.1:50051

What it does, as a chat app would:
  1. alice enters a room (EnterRoom creates it, or joins it if it exists);
  2. opens a Subscribe stream, attaches the room and sends on the stream;
  3. receives her own messages live, remembering the highest seq she processed;
  4. loses the stream (here: closes it) while bob sends two messages;
  5. reconnects and attaches with after_seq = that seq: she receives exactly what
     she missed, in order, then live messages again.

The stubs are generated at start into a temporary directory with grpcio-tools,
the way a project's build step would (`python -m grpc_tools.protoc ...`).
Exit status 0 means every step held; each step prints what it saw.
"""

import argparse
import importlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
import uuid

import grpc

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
WAIT = 10.0


def generate_stubs():
    out = tempfile.mkdtemp(prefix="chatroom-example-")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
         f"--python_out={out}", f"--grpc_python_out={out}", "chatroom/v1/chatroom.proto"],
        check=True)
    for package in ("chatroom", "chatroom/v1"):
        open(os.path.join(out, package, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    return (importlib.import_module("chatroom.v1.chatroom_pb2"),
            importlib.import_module("chatroom.v1.chatroom_pb2_grpc"))


pb, pb_grpc = generate_stubs()


def as_user(user):
    """Call metadata naming the user (the server's default `--auth header`; with
    `--auth jwt` send `authorization: Bearer <token>` instead)."""
    return [("x-user-id", user)]


class Stream:
    """One Subscribe stream: frames go out through a queue, events come back on a
    thread and wait in another queue."""

    def __init__(self, stub, user):
        self.outgoing = queue.Queue()
        self.events = queue.Queue()
        self.next_id = 0
        # Messages that arrived while waiting for a request's answer.
        self.backlog = []
        self.call = stub.Subscribe(iter(self.outgoing.get, None), metadata=as_user(user))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for response in self.call:
                self.events.put(response)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.events.put(error)

    def request(self, **frame):
        self.next_id += 1
        request_id = str(self.next_id)
        self.outgoing.put(pb.SubscribeRequest(request_id=request_id, **frame))
        return request_id

    def next(self):
        event = self.events.get(timeout=WAIT)
        if isinstance(event, Exception):
            raise event
        return event

    def reply(self, request_id):
        """The answer to one request; messages that arrive first wait in `backlog`."""
        while True:
            response = self.next()
            if response.request_id == request_id:
                return response
            if response.WhichOneof("event") == "message":
                self.backlog.append(response.message)

    def attach(self, room_id, after_seq=None):
        attach = pb.AttachRoom(room_id=room_id)
        if after_seq is not None:
            attach.after_seq = after_seq
        response = self.reply(self.request(attach=attach))
        check(response.WhichOneof("event") == "attached", f"attach failed: {response}")
        return response.attached

    def messages(self, count):
        """The next `count` CHAT messages of any attached room, in arrival order."""
        got, self.backlog = self.backlog, []
        while len(got) < count:
            response = self.next()
            if response.WhichOneof("event") == "message":
                got.append(response.message)
        self.backlog = got[count:]
        return got[:count]

    def close(self):
        self.outgoing.put(None)
        self.call.cancel()


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}")
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="the server's host:port")
    parser.add_argument("--room", default=f"py-{uuid.uuid4().hex[:8]}", help="room id to use")
    args = parser.parse_args()

    channel = grpc.insecure_channel(args.target)
    stub = pb_grpc.ChatRoomServiceStub(channel)
    room_id = args.room

    # 1. Enter: creates the room, or joins it.
    entered = stub.EnterRoom(pb.EnterRoomRequest(room_id=room_id, name="Python example",
                                                 display_name="Alice"),
                             metadata=as_user("alice"))
    print(f"alice entered {room_id} (created: {entered.created})")
    stub.JoinRoom(pb.JoinRoomRequest(room_id=room_id, display_name="Bob"), metadata=as_user("bob"))
    print("bob joined")

    # 2-3. Attach, send on the stream, receive live.
    stream = Stream(stub, "alice")
    attached = stream.attach(room_id)
    print(f"attached at seq {attached.room.last_seq}")
    for text in ("hello", "from", "python"):
        ack = stream.reply(stream.request(send=pb.SendMessageRequest(room_id=room_id, text=text)))
        check(ack.WhichOneof("event") == "send_ack", f"send failed: {ack}")
    live = stream.messages(3)
    check([m.text for m in live] == ["hello", "from", "python"], f"live messages: {live}")
    last_seq = live[-1].seq
    print(f"received live: {[m.text for m in live]} (last seq {last_seq})")

    # 4. The stream is lost; bob goes on talking.
    stream.close()
    for text in ("you", "missed this"):
        stub.SendMessage(pb.SendMessageRequest(room_id=room_id, text=text), metadata=as_user("bob"))
    print("stream closed; bob sent 2 messages meanwhile")

    # 5. Reconnect and resume after the last seq processed.
    stream = Stream(stub, "alice")
    resumed = stream.attach(room_id, after_seq=last_seq)
    check(not resumed.history_truncated, "history was truncated")
    missed = stream.messages(2)
    check([(m.text, m.sender_id) for m in missed] == [("you", "bob"), ("missed this", "bob")],
          f"missed messages: {missed}")
    check([m.seq for m in missed] == [last_seq + 1, last_seq + 2], f"seqs: {missed}")
    print(f"resumed after seq {last_seq}: {[m.text for m in missed]}")
    stub.SendMessage(pb.SendMessageRequest(room_id=room_id, text="welcome back"),
                     metadata=as_user("bob"))
    again = stream.messages(1)
    check(again[0].text == "welcome back", f"live after resume: {again}")
    print("live again: welcome back")
    stream.close()
    print("python example: every step held")


if __name__ == "__main__":
    main()
