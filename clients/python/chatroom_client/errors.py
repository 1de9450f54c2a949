"""Typed errors: what the server said, with its `google.rpc` details read out.

Every error of the chatroom service carries an `ErrorInfo` whose `reason` is stable
(`ROOM_NOT_FOUND`, `RATE_LIMITED`, `TOKEN_EXPIRED`, ...); bad input also a `BadRequest`
naming the field, and a refusal to retry later a `RetryInfo` with the delay. An
application branches on `reason`, not on the message text.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import grpc
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"

# Codes after which the same request may succeed on a retry (another node, a moment
# later): the library retries these itself.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass
class ChatroomError(Exception):
    """A call or a stream frame the server refused, or a connection that failed."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: Dict[str, str] = field(default_factory=dict)
    field_violations: List[Tuple[str, str]] = field(default_factory=list)
    retry_after: Optional[float] = None

    def __str__(self):
        reason = f" {self.reason}" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (UNAVAILABLE, a deadline)."""
        return self.code in RETRYABLE

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "ChatroomError":
        """The error a failed call or stream ended with, its details read."""
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        message = error.details() if callable(getattr(error, "details", None)) else str(error)
        found = cls(code=code or grpc.StatusCode.UNKNOWN, message=message or "")
        trailers = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
        for key, value in trailers or ():
            if key == DETAILS_KEY:
                found._read_details(value)
        return found

    @classmethod
    def from_stream_error(cls, error) -> "ChatroomError":
        """A `StreamError` event: a frame of a Subscribe stream that was refused."""
        try:
            code = grpc.StatusCode[_CODE_NAMES[error.code]]
        except (IndexError, KeyError):
            code = grpc.StatusCode.UNKNOWN
        retry_after = None
        if error.HasField("retry_after"):
            retry_after = error.retry_after.seconds + error.retry_after.nanos / 1e9
        return cls(code=code, message=error.message, reason=error.reason, retry_after=retry_after)

    def _read_details(self, blob: bytes):
        status = status_pb2.Status()
        try:
            status.ParseFromString(blob)
        except Exception:  # a proxy's garbage: keep what the status line said
            return
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                self.reason = info.reason
                self.metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                self.field_violations = [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                delay = retry.retry_delay
                self.retry_after = delay.seconds + delay.nanos / 1e9


# grpc.StatusCode names by their numbers (StreamError.code is the number).
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
