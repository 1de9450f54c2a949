"""A Subscribe stream that survives its connection: the piece of client code that
decides whether messages are lost.

The session remembers, per attached room, the highest `seq` it has delivered. When the
stream breaks — the node restarts or is killed, the network drops, the server drains
for a shutdown — it reconnects with jittered backoff (to the next node, if the client
has several) and attaches every room again with `after_seq` = that seq. The server
sends every stored message after it, then live ones, so the application sees each
stored message once, in order, with no gap. A message seen again across the seam is
dropped here; a jump the server announces (history deleted by retention) is handed to
the application as `HistoryTruncated`, never hidden.
"""

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import grpc

from ._gen import chatroom_pb2 as pb
from .client import Backoff, Client, token_expiry
from .errors import ChatroomError


@dataclass
class HistoryTruncated:
    """Messages of `room_id` before `resumes_at_seq` were deleted by retention before
    they could be delivered (`resumes_at_seq` None: from the attach point to the next
    message delivered)."""
    room_id: str
    resumes_at_seq: Optional[int]


@dataclass
class RoomLost:
    """`room_id` is no longer attached: the user left, was kicked or banned, the room
    was deleted (`reason`, a `DetachReason`), or attaching it again was refused
    (`error`). The session does not attach it again."""
    room_id: str
    reason: int = pb.DETACH_REASON_UNSPECIFIED
    error: Optional[ChatroomError] = None


@dataclass
class Reconnecting:
    """The stream broke (`error`); the session connects again in `delay` seconds."""
    error: Optional[ChatroomError]
    delay: float


@dataclass
class Resumed:
    """The stream is back, on `target`, and `room_id` attached again after `after_seq`."""
    target: str
    room_id: str
    after_seq: Optional[int]


Event = Union[pb.Message, HistoryTruncated, RoomLost, Reconnecting, Resumed, pb.SubscribeResponse]


class _Room:
    def __init__(self, after_seq: Optional[int]):
        # The highest seq delivered (or the attach point); None: live from now.
        self.last_seq = after_seq


class Session:
    """Attached rooms and their messages, across reconnects.

    ``async for event in session`` yields, in the order they happened:

    - `pb.Message`: stored kinds (CHAT, RECALL, EDIT: `seq` > 0) once each, in seq
      order per room; BARRAGE and COMMAND (`seq` 0) as they come (never stored, so
      what a broken stream missed of them is gone);
    - `HistoryTruncated`, `RoomLost`, `Reconnecting`, `Resumed`;
    - every other event of the stream (members joined or left, room updated) as the
      raw `pb.SubscribeResponse`.

    An error that retrying cannot fix (PERMISSION_DENIED, a token refused for good)
    ends the iteration by raising `ChatroomError`.
    """

    def __init__(self, client: Client, *, backoff: Optional[Backoff] = None, queue_size: int = 10_000):
        self.client = client
        self.backoff = backoff or Backoff()
        self._rooms: Dict[str, _Room] = {}
        self._events: asyncio.Queue = asyncio.Queue(queue_size)
        # Attaches the application waits on: request id → (room, its answer).
        self._pending: Dict[str, Tuple[str, asyncio.Future]] = {}
        self._ids = itertools.count(1)
        self._outgoing: Optional[asyncio.Queue] = None
        self._closed = False
        self._task: Optional[asyncio.Task] = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def __aiter__(self):
        return self

    async def __anext__(self) -> Event:
        event = await self._events.get()
        if event is None:
            raise StopAsyncIteration
        if isinstance(event, ChatroomError):
            raise event
        return event

    async def close(self):
        """Ends the stream and the iteration."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._events.full():
            # Nobody is reading: make room for the end rather than wait for a reader.
            self._events.get_nowait()
        self._events.put_nowait(None)

    @property
    def rooms(self) -> Dict[str, Optional[int]]:
        """The attached rooms and the highest seq delivered of each."""
        return {room_id: room.last_seq for room_id, room in self._rooms.items()}

    async def attach(self, room_id: str, after_seq: Optional[int] = None, timeout: float = 30.0) -> pb.Room:
        """Starts receiving `room_id` (its member only): every stored message after
        `after_seq`, then live ones; `after_seq` None: live from now. Returns the room
        as attached; raises `ChatroomError` if the server refuses (the room is then not
        kept). While the session is reconnecting this waits for the stream."""
        self._rooms[room_id] = _Room(after_seq)
        self._start()
        answer = asyncio.get_running_loop().create_future()
        request_id = f"attach-{next(self._ids)}"
        self._pending[request_id] = (room_id, answer)
        if self._outgoing is not None:
            self._outgoing.put_nowait(self._attach_frame(request_id, room_id))
        try:
            return await asyncio.wait_for(answer, timeout)
        except ChatroomError:
            self._rooms.pop(room_id, None)
            raise
        finally:
            self._pending.pop(request_id, None)

    async def detach(self, room_id: str):
        """Stops receiving `room_id`."""
        if self._rooms.pop(room_id, None) is not None and self._outgoing is not None:
            frame = pb.SubscribeRequest(request_id=f"detach-{next(self._ids)}",
                                        detach=pb.DetachRoom(room_id=room_id))
            self._outgoing.put_nowait(frame)

    async def send(self, room_id: str, text: str = "", **options) -> pb.Message:
        """Sends through the client (`Client.send`: a `client_msg_id`, retried until
        acknowledged); the message also arrives on this session, once."""
        return await self.client.send(room_id, text, **options)

    # -- the stream ---------------------------------------------------------------

    def _start(self):
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _attach_frame(self, request_id: str, room_id: str) -> pb.SubscribeRequest:
        attach = pb.AttachRoom(room_id=room_id)
        last = self._rooms[room_id].last_seq
        if last is not None:
            attach.after_seq = last
        return pb.SubscribeRequest(request_id=request_id, attach=attach)

    async def _run(self):
        """Connects, runs the stream until it breaks, and again, until closed."""
        fresh_token = False
        while not self._closed:
            error = None
            try:
                await self._stream(fresh_token)
            except grpc.aio.AioRpcError as raw:
                error = ChatroomError.from_rpc_error(raw)
            except ChatroomError as refused:
                error = refused
            if self._closed:
                return
            fresh_token = error is not None and error.reason == "TOKEN_EXPIRED"
            if error is not None and not (error.retryable or self._reconnects_after(error)):
                for _, answer in self._pending.values():
                    if not answer.done():
                        answer.set_exception(error)
                await self._events.put(error)
                return
            delay = 0.0 if fresh_token else self.backoff.next()
            await self._events.put(Reconnecting(error, delay))
            await self.client.next_target()
            await asyncio.sleep(delay)

    def _reconnects_after(self, error: ChatroomError) -> bool:
        """Besides UNAVAILABLE: a stream the server ended as it stopped (CANCELLED,
        or no status), an error from a broken connection (INTERNAL, UNKNOWN), and an
        expired token while there is a provider for a fresh one."""
        if error.reason == "TOKEN_EXPIRED":
            return self.client.refreshes_tokens
        return error.code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
                              grpc.StatusCode.UNKNOWN)

    async def _stream(self, fresh_token: bool):
        outgoing: asyncio.Queue = asyncio.Queue()
        metadata = await self.client.metadata(fresh_token=fresh_token)
        call = self.client.stub.Subscribe(_frames(outgoing), metadata=metadata)
        target = self.client.target
        # Every room again; one the application is still waiting on under the id it
        # waits for, the others as resumes.
        waited = {room_id: request_id for request_id, (room_id, _) in self._pending.items()}
        reattached = {}
        for room_id in list(self._rooms):
            request_id = waited.get(room_id)
            if request_id is None:
                request_id = f"resume-{next(self._ids)}"
                reattached[request_id] = (room_id, self._rooms[room_id].last_seq)
            outgoing.put_nowait(self._attach_frame(request_id, room_id))
        self._outgoing = outgoing
        refresher = asyncio.get_running_loop().create_task(self._refresh_tokens(outgoing))
        try:
            async for response in call:
                await self._receive(response, reattached, target)
            # The server ended the stream without an error: it is stopping.
            raise ChatroomError(grpc.StatusCode.UNAVAILABLE, "the stream ended")
        finally:
            refresher.cancel()
            self._outgoing = None
            outgoing.put_nowait(None)
            call.cancel()

    async def _receive(self, response: pb.SubscribeResponse, reattached: dict, target: str):
        event = response.WhichOneof("event")
        request_id = response.request_id
        if event == "attached":
            self.backoff.reset()
            await self._attached(response.attached, request_id, reattached, target)
        elif event == "message":
            await self._message(response.message)
        elif event == "history_truncated":
            truncated = response.history_truncated
            room = self._rooms.get(truncated.room_id)
            if room is not None:
                room.last_seq = truncated.resumes_at_seq - 1
            await self._events.put(HistoryTruncated(truncated.room_id, truncated.resumes_at_seq))
        elif event == "detached":
            if self._rooms.pop(response.detached.room_id, None) is not None:
                await self._events.put(RoomLost(response.detached.room_id, response.detached.reason))
        elif event == "error":
            await self._refused(ChatroomError.from_stream_error(response.error), request_id, reattached)
        elif event not in ("pong", "token_refreshed", "send_ack"):
            await self._events.put(response)

    async def _attached(self, attached: pb.RoomAttached, request_id: str, reattached: dict, target: str):
        room_id = attached.room.room_id
        room = self._rooms.get(room_id)
        if room is not None and room.last_seq is None:
            # Live from now: the attach point is what a reconnect resumes after.
            room.last_seq = attached.room.last_seq
        if attached.history_truncated:
            await self._events.put(HistoryTruncated(room_id, None))
        _, answer = self._pending.get(request_id, (None, None))
        if answer is not None and not answer.done():
            answer.set_result(attached.room)
        elif request_id in reattached:
            await self._events.put(Resumed(target, room_id, reattached[request_id][1]))

    async def _message(self, message: pb.Message):
        room = self._rooms.get(message.room_id)
        if room is None:
            return  # detached meanwhile
        if message.seq:
            if room.last_seq is not None and message.seq <= room.last_seq:
                return  # already delivered: the seam of a resume
            room.last_seq = message.seq
        await self._events.put(message)

    async def _refused(self, error: ChatroomError, request_id: str, reattached: dict):
        _, answer = self._pending.get(request_id, (None, None))
        if answer is not None and not answer.done():
            answer.set_exception(error)
            return
        again = reattached.get(request_id)
        if again is not None:
            # A room that cannot be attached again (the user was removed while away).
            self._rooms.pop(again[0], None)
            await self._events.put(RoomLost(again[0], error=error))
            return
        await self._events.put(pb.SubscribeResponse(
            request_id=request_id,
            error=pb.StreamError(code=error.code.value[0], reason=error.reason, message=error.message)))

    async def _refresh_tokens(self, outgoing: asyncio.Queue):
        """Sends the stream a fresh token before its current one expires (the server
        ends a stream whose token runs out)."""
        if not self.client.refreshes_tokens:
            return
        while True:
            token = await self.client.token()
            expiry = token_expiry(token) if token else None
            if expiry is None:
                return
            await asyncio.sleep(max(self.client.refresh_at(expiry) - time.time(), 0.05))
            fresh = await self.client.token(fresh=True)
            outgoing.put_nowait(pb.SubscribeRequest(
                request_id=f"refresh-{next(self._ids)}", refresh_token=pb.RefreshToken(token=fresh)))


async def _frames(outgoing: asyncio.Queue):
    """The stream's request frames, from a queue (None ends them)."""
    while True:
        frame = await outgoing.get()
        if frame is None:
            return
        yield frame
