"""chatroom_client: a client of the chatroom gRPC service that reconnects and resumes
by itself.

    import asyncio
    from chatroom_client import Client, pb

    async def main():
        async with Client("127.0.0.1:50051", user="alice") as client:
            await client.enter_room("lobby")
            async with client.session() as session:
                await session.attach("lobby", after_seq=0)
                await client.send("lobby", "hello")
                async for event in session:
                    if isinstance(event, pb.Message):
                        print(event.seq, event.sender_id, event.text)

    asyncio.run(main())

- `Client`: calls with the caller's identity (a user id, a bearer token, or a token
  provider refreshed before expiry), retried on UNAVAILABLE on the next node with
  jittered backoff; `send` carries a `client_msg_id` so a retry stores it once.
- `Session`: a Subscribe stream that re-attaches every room after a break with the
  last seq it delivered: each stored message once, in order, no gap.
- `ChatroomError`: the `ErrorInfo` reason, `BadRequest` fields and `RetryInfo` delay.
- `pb`, `pb_grpc`: the generated messages and stub, for everything else.
- `python -m chatroom_client tail ...`: watch a room from a shell.
"""

from ._gen import chatroom_pb2 as pb
from ._gen import chatroom_pb2_grpc as pb_grpc
from .client import Backoff, Client
from .errors import ChatroomError
from .session import HistoryTruncated, Reconnecting, Resumed, RoomLost, Session

__all__ = [
    "Backoff", "ChatroomError", "Client", "HistoryTruncated", "Reconnecting", "Resumed",
    "RoomLost", "Session", "pb", "pb_grpc",
]
