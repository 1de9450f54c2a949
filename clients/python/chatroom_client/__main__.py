"""python -m chatroom_client tail: watch a room from a shell.

Prints every message of the room as one JSON line (`room_id`, `seq`, `sender_id`,
`text`) and keeps going: across server restarts and the loss of a node it reconnects
(to the next of several --target nodes) and resumes after the last message printed,
so nothing is missed or printed twice. What happens to the connection goes to stderr.
"""

import argparse
import asyncio
import json
import sys

from . import Client, HistoryTruncated, Reconnecting, Resumed, RoomLost, pb
from .errors import ChatroomError


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m chatroom_client", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tail = commands.add_parser("tail", help="print a room's messages as JSON lines, resuming across restarts",
                               description=__doc__)
    tail.add_argument("--target", required=True,
                      help="HOST:PORT of a node; several, comma-separated, are tried in turn")
    tail.add_argument("--room", required=True, help="the room to watch (its member only)")
    who = tail.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the user id (a server with --auth header)")
    who.add_argument("--token", help="a bearer token (a server with --auth jwt)")
    tail.add_argument("--after-seq", type=int, default=None,
                      help="print the stored messages after this seq first (0: all); default: live from now")
    tail.add_argument("--join", action="store_true", help="join the room first (JoinRoom)")
    return parser.parse_args(argv)


async def tail(args) -> int:
    async with Client(args.target, user=args.user, token=args.token) as client:
        if args.join:
            await client.join_room(args.room)
        async with client.session() as session:
            await session.attach(args.room, after_seq=args.after_seq)
            print(f"attached {args.room} on {client.target}", file=sys.stderr, flush=True)
            async for event in session:
                if isinstance(event, pb.Message):
                    line = {"room_id": event.room_id, "seq": event.seq,
                            "sender_id": event.sender_id, "text": event.text}
                    print(json.dumps(line, ensure_ascii=False), flush=True)
                elif isinstance(event, Reconnecting):
                    print(f"reconnecting in {event.delay:.2f}s: {event.error}", file=sys.stderr, flush=True)
                elif isinstance(event, Resumed):
                    print(f"resumed {event.room_id} after seq {event.after_seq} on {event.target}",
                          file=sys.stderr, flush=True)
                elif isinstance(event, HistoryTruncated):
                    print(f"history truncated: {event.room_id} resumes at seq {event.resumes_at_seq}",
                          file=sys.stderr, flush=True)
                elif isinstance(event, RoomLost):
                    print(f"room lost: {event.room_id} ({event.error or event.reason})",
                          file=sys.stderr, flush=True)
                    return 1
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    try:
        return asyncio.run(tail(args))
    except ChatroomError as error:
        print(f"chatroom_client: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
