#!/usr/bin/env python3
"""From zero to a live room in Python, with the chatroom_client library.

    pip install ./clients/python
    python3 examples/python/chat.py --target 127.0.0.1:50051

What it does, as a chat app would:
  1. alice enters a room (EnterRoom creates it, or joins it if it exists); bob joins;
  2. alice opens a session, attaches the room from its start and sends;
  3. she receives her own messages and bob's, in seq order;
  4. a typed error: joining a room that does not exist says ROOM_NOT_FOUND.

What the app does not write: reconnecting and resuming. If the stream breaks, the
session attaches the room again after the last seq it delivered, by itself (the
library's tests kill the server under it to show that nothing is lost).
Exit status 0 means every step held; each step prints what it saw.
"""

import argparse
import asyncio
import sys
import uuid

from chatroom_client import ChatroomError, Client, pb


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}")
        sys.exit(1)


async def messages(session, count):
    """The next `count` messages the session delivers."""
    got = []
    async for event in session:
        if isinstance(event, pb.Message):
            got.append(event)
            if len(got) == count:
                return got
    return got


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="the server's host:port")
    parser.add_argument("--room", default=f"py-{uuid.uuid4().hex[:8]}", help="room id to use")
    args = parser.parse_args()
    room_id = args.room

    # x-user-id names the caller (the server's default --auth header); with --auth jwt
    # pass token= or token_provider= instead.
    async with Client(args.target, user="alice") as alice, Client(args.target, user="bob") as bob:
        # 1. Enter: creates the room, or joins it.
        entered = await alice.enter_room(room_id, name="Python example", display_name="Alice")
        print(f"alice entered {room_id} (created: {entered.created})")
        await bob.join_room(room_id, display_name="Bob")
        print("bob joined")

        # 2-3. A session: attach from the start, send, receive in order.
        async with alice.session() as session:
            attached = await session.attach(room_id, after_seq=0)
            print(f"attached at seq {attached.last_seq}")
            for text in ("hello", "from", "python"):
                sent = await alice.send(room_id, text)
                print(f"alice sent {text!r}: seq {sent.seq}")
            await bob.send(room_id, "hi alice")
            got = await asyncio.wait_for(messages(session, 4), 10)
            check([(m.text, m.sender_id) for m in got]
                  == [("hello", "alice"), ("from", "alice"), ("python", "alice"), ("hi alice", "bob")],
                  f"messages: {got}")
            check([m.seq for m in got] == [1, 2, 3, 4], f"seqs: {[m.seq for m in got]}")
            print(f"received in order: {[m.text for m in got]}; resumes after seq "
                  f"{session.rooms[room_id]} if the stream breaks")

        # 4. Errors carry a stable reason.
        try:
            await bob.join_room(f"{room_id}-missing")
            check(False, "joined a room that does not exist")
        except ChatroomError as error:
            check(error.reason == "ROOM_NOT_FOUND", f"error: {error}")
            print(f"joining a missing room: {error.code.name} {error.reason}")
    print("python example: every step held")


if __name__ == "__main__":
    asyncio.run(main())
