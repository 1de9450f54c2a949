"""The client: a connection to one of the service's nodes, calls that retry what is
safe to retry, and the caller's identity on each of them."""

import asyncio
import base64
import inspect
import json
import random
import time
import uuid
from typing import Awaitable, Callable, Iterable, List, Optional, Sequence, Union

import grpc

from ._gen import chatroom_pb2 as pb
from ._gen import chatroom_pb2_grpc as pb_grpc
from .errors import ChatroomError

TokenProvider = Callable[[], Union[str, Awaitable[str]]]

# A dead peer (a node cut off, not refusing) is noticed by keepalive pings: every
# 10 s, 5 s to answer.
CHANNEL_OPTIONS = [
    # The session and the calls back off themselves; the channel's own reconnects
    # (1 s growing to 120 s by default) would keep them waiting after a node is back.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


class Backoff:
    """Jittered exponential backoff: the n-th wait is uniform in [0, min(cap, base·2ⁿ)]
    ("full jitter"), so clients that lost the same node do not come back at once."""

    def __init__(self, base: float = 0.1, cap: float = 5.0):
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        delay = random.uniform(0, min(self.cap, self.base * 2 ** self.attempt))
        self.attempt += 1
        return delay

    def reset(self):
        self.attempt = 0


def token_expiry(token: str) -> Optional[float]:
    """A JWT's `exp` (Unix seconds), read without verifying it; None if it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, ValueError, TypeError):
        return None


class Client:
    """A chatroom client.

    `targets`: one `host:port` or several (a list, or comma-separated), tried in turn:
    when a node stops answering, the next one is used. Identity: `user` (the server's
    `--auth header` mode, for trusted backends), or a bearer `token`, or a
    `token_provider` — a function (or coroutine function) returning a fresh token,
    called before the current one expires and again whenever the server says it has.
    `retry_for`: how long a call that may be retried keeps trying (seconds).
    """

    def __init__(self, targets: Union[str, Sequence[str]], *, user: Optional[str] = None,
                 token: Optional[str] = None, token_provider: Optional[TokenProvider] = None,
                 credentials: Optional[grpc.ChannelCredentials] = None, retry_for: float = 30.0,
                 refresh_margin: float = 30.0):
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        if not targets:
            raise ValueError("give at least one target (host:port)")
        if sum(x is not None for x in (user, token, token_provider)) > 1:
            raise ValueError("give one identity: user, token or token_provider")
        self.targets: List[str] = list(targets)
        self._index = 0
        self._user, self._token, self._provider = user, token, token_provider
        self._credentials = credentials
        self.retry_for = retry_for
        self.refresh_margin = refresh_margin
        self._channel: Optional[grpc.aio.Channel] = None
        self._closing: set = set()
        self._stub: Optional[pb_grpc.ChatRoomServiceStub] = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self):
        """Closes the channel (calls still on it are cancelled)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None
        for task in list(self._closing):
            task.cancel()

    @property
    def target(self) -> str:
        """The node calls go to now."""
        return self.targets[self._index]

    @property
    def stub(self) -> pb_grpc.ChatRoomServiceStub:
        """The generated stub on the current node, for calls this class does not wrap
        (pass `metadata=await client.metadata()`)."""
        if self._stub is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials, CHANNEL_OPTIONS)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, CHANNEL_OPTIONS)
            self._stub = pb_grpc.ChatRoomServiceStub(self._channel)
        return self._stub

    async def next_target(self):
        """Moves to the next node, after the current one failed. With one node the
        channel stays: it reconnects by itself. An old channel is closed once the calls
        still on it have had `retry_for` to finish (other tasks may share it)."""
        if len(self.targets) == 1:
            return
        old = self._channel
        self._channel, self._stub = None, None
        self._index = (self._index + 1) % len(self.targets)
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.close(grace=self.retry_for))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    # -- identity -----------------------------------------------------------------

    async def token(self, *, fresh: bool = False) -> Optional[str]:
        """The bearer token to send: the provider's, fetched again when the cached one
        is within `refresh_margin` of expiring (or half its lifetime, for short ones),
        or when `fresh`."""
        if self._provider is None:
            return self._token
        expiry = token_expiry(self._token) if self._token else None
        if fresh or self._token is None or (expiry is not None and time.time() >= self.refresh_at(expiry)):
            token = self._provider()
            self._token = await token if inspect.isawaitable(token) else token
        return self._token

    def refresh_at(self, expiry: float) -> float:
        """When a token expiring at `expiry` (now being used) should be replaced."""
        left = expiry - time.time()
        return expiry - min(self.refresh_margin, max(left, 0) / 2)

    @property
    def refreshes_tokens(self) -> bool:
        return self._provider is not None

    async def metadata(self, *, fresh_token: bool = False) -> list:
        """The call metadata naming the caller."""
        if self._user is not None:
            return [("x-user-id", self._user)]
        token = await self.token(fresh=fresh_token)
        return [("authorization", f"Bearer {token}")] if token else []

    # -- calls --------------------------------------------------------------------

    async def call(self, method: str, request, *, retry: bool = True):
        """Calls `method` of the service with `request`. With `retry` (for requests
        that are safe to repeat), UNAVAILABLE and deadlines are retried on the next
        node with jittered backoff, a refusal carrying a `RetryInfo` (RATE_LIMITED)
        after the delay it names, and an expired token once with a fresh one — for up
        to `retry_for` seconds. Raises `ChatroomError`."""
        deadline = time.monotonic() + self.retry_for
        backoff = Backoff()
        fresh_token = False
        while True:
            try:
                rpc = getattr(self.stub, method)
                return await rpc(request, metadata=await self.metadata(fresh_token=fresh_token))
            except grpc.aio.AioRpcError as raw:
                error = ChatroomError.from_rpc_error(raw)
            wait = self._retry_wait(error, backoff, fresh_token)
            if not retry or wait is None or time.monotonic() + wait > deadline:
                raise error
            fresh_token = error.reason == "TOKEN_EXPIRED"
            if error.retryable:
                await self.next_target()
            await asyncio.sleep(wait)

    def _retry_wait(self, error: ChatroomError, backoff: Backoff, refreshed: bool) -> Optional[float]:
        """How long to wait before retrying after `error`, or None: do not."""
        if error.retryable:
            return backoff.next()
        if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_after is not None:
            return error.retry_after
        if error.reason == "TOKEN_EXPIRED" and self.refreshes_tokens and not refreshed:
            return 0.0
        return None

    async def send(self, room_id: str, text: str = "", *, kind: int = pb.MESSAGE_KIND_CHAT,
                   payload: bytes = b"", content_type: str = "", to_user_ids: Iterable[str] = (),
                   client_msg_id: Optional[str] = None) -> pb.Message:
        """Sends a message and returns it as stored (with its `seq`). It carries a
        `client_msg_id` (a fresh UUID unless given), so retrying after UNAVAILABLE —
        which this does until acknowledged or `retry_for` runs out — stores it once:
        a retry of a message already stored returns the stored one."""
        request = pb.SendMessageRequest(
            room_id=room_id, text=text, kind=kind, payload=payload, content_type=content_type,
            to_user_ids=list(to_user_ids), client_msg_id=client_msg_id or str(uuid.uuid4()))
        return (await self.call("SendMessage", request)).message

    async def create_room(self, room_id: str = "", name: str = "", **fields) -> pb.Room:
        """Creates a room (ALREADY_EXISTS if the id is taken). Not retried: a retry
        after a lost answer would say ALREADY_EXISTS for the room it made."""
        request = pb.CreateRoomRequest(room_id=room_id, name=name, **fields)
        return (await self.call("CreateRoom", request, retry=False)).room

    async def enter_room(self, room_id: str, name: str = "", display_name: str = "") -> pb.EnterRoomResponse:
        """Joins a room, creating it if it does not exist (`created` says which)."""
        request = pb.EnterRoomRequest(room_id=room_id, name=name, display_name=display_name)
        return await self.call("EnterRoom", request)

    async def join_room(self, room_id: str, display_name: str = "") -> pb.Room:
        """Joins an existing room (NOT_FOUND if there is none); joining twice is fine."""
        request = pb.JoinRoomRequest(room_id=room_id, display_name=display_name)
        return (await self.call("JoinRoom", request)).room

    async def leave_room(self, room_id: str):
        """Leaves a room; leaving one is not in is fine."""
        await self.call("LeaveRoom", pb.LeaveRoomRequest(room_id=room_id))

    async def get_room(self, room_id: str) -> pb.Room:
        return (await self.call("GetRoom", pb.GetRoomRequest(room_id=room_id))).room

    async def list_messages(self, room_id: str, **fields) -> List[pb.Message]:
        """One page of a room's stored messages (`ListMessagesRequest` fields)."""
        response = await self.call("ListMessages", pb.ListMessagesRequest(room_id=room_id, **fields))
        return list(response.messages)

    def session(self, **options) -> "Session":
        """A Subscribe stream that resumes by itself (see `Session`)."""
        from .session import Session
        return Session(self, **options)
