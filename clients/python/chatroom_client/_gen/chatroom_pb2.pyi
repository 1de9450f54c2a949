import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MemberEvents(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMBER_EVENTS_UNSPECIFIED: _ClassVar[MemberEvents]
    MEMBER_EVENTS_ALL: _ClassVar[MemberEvents]
    MEMBER_EVENTS_NONE: _ClassVar[MemberEvents]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_OWNER: _ClassVar[Role]
    ROLE_MEMBER: _ClassVar[Role]
    ROLE_MODERATOR: _ClassVar[Role]

class MessageKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_KIND_UNSPECIFIED: _ClassVar[MessageKind]
    MESSAGE_KIND_CHAT: _ClassVar[MessageKind]
    MESSAGE_KIND_BARRAGE: _ClassVar[MessageKind]
    MESSAGE_KIND_COMMAND: _ClassVar[MessageKind]
    MESSAGE_KIND_RECALL: _ClassVar[MessageKind]
    MESSAGE_KIND_EDIT: _ClassVar[MessageKind]

class RoomFeedEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROOM_FEED_EVENT_KIND_UNSPECIFIED: _ClassVar[RoomFeedEventKind]
    ROOM_FEED_EVENT_KIND_CREATED: _ClassVar[RoomFeedEventKind]
    ROOM_FEED_EVENT_KIND_UPDATED: _ClassVar[RoomFeedEventKind]
    ROOM_FEED_EVENT_KIND_DELETED: _ClassVar[RoomFeedEventKind]
    ROOM_FEED_EVENT_KIND_OCCUPIED: _ClassVar[RoomFeedEventKind]
    ROOM_FEED_EVENT_KIND_EMPTY: _ClassVar[RoomFeedEventKind]
    ROOM_FEED_EVENT_KIND_MEMBER_JOINED: _ClassVar[RoomFeedEventKind]
    ROOM_FEED_EVENT_KIND_MEMBER_LEFT: _ClassVar[RoomFeedEventKind]
    ROOM_FEED_EVENT_KIND_MEMBER_KICKED: _ClassVar[RoomFeedEventKind]
    ROOM_FEED_EVENT_KIND_MEMBER_BANNED: _ClassVar[RoomFeedEventKind]
    ROOM_FEED_EVENT_KIND_MEMBER_ROLE_CHANGED: _ClassVar[RoomFeedEventKind]

class DetachReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DETACH_REASON_UNSPECIFIED: _ClassVar[DetachReason]
    DETACH_REASON_REQUESTED: _ClassVar[DetachReason]
    DETACH_REASON_LEFT: _ClassVar[DetachReason]
    DETACH_REASON_SWITCHED: _ClassVar[DetachReason]
    DETACH_REASON_ROOM_DELETED: _ClassVar[DetachReason]
    DETACH_REASON_PRESENCE_TIMEOUT: _ClassVar[DetachReason]
    DETACH_REASON_KICKED: _ClassVar[DetachReason]
MEMBER_EVENTS_UNSPECIFIED: MemberEvents
MEMBER_EVENTS_ALL: MemberEvents
MEMBER_EVENTS_NONE: MemberEvents
ROLE_UNSPECIFIED: Role
ROLE_OWNER: Role
ROLE_MEMBER: Role
ROLE_MODERATOR: Role
MESSAGE_KIND_UNSPECIFIED: MessageKind
MESSAGE_KIND_CHAT: MessageKind
MESSAGE_KIND_BARRAGE: MessageKind
MESSAGE_KIND_COMMAND: MessageKind
MESSAGE_KIND_RECALL: MessageKind
MESSAGE_KIND_EDIT: MessageKind
ROOM_FEED_EVENT_KIND_UNSPECIFIED: RoomFeedEventKind
ROOM_FEED_EVENT_KIND_CREATED: RoomFeedEventKind
ROOM_FEED_EVENT_KIND_UPDATED: RoomFeedEventKind
ROOM_FEED_EVENT_KIND_DELETED: RoomFeedEventKind
ROOM_FEED_EVENT_KIND_OCCUPIED: RoomFeedEventKind
ROOM_FEED_EVENT_KIND_EMPTY: RoomFeedEventKind
ROOM_FEED_EVENT_KIND_MEMBER_JOINED: RoomFeedEventKind
ROOM_FEED_EVENT_KIND_MEMBER_LEFT: RoomFeedEventKind
ROOM_FEED_EVENT_KIND_MEMBER_KICKED: RoomFeedEventKind
ROOM_FEED_EVENT_KIND_MEMBER_BANNED: RoomFeedEventKind
ROOM_FEED_EVENT_KIND_MEMBER_ROLE_CHANGED: RoomFeedEventKind
DETACH_REASON_UNSPECIFIED: DetachReason
DETACH_REASON_REQUESTED: DetachReason
DETACH_REASON_LEFT: DetachReason
DETACH_REASON_SWITCHED: DetachReason
DETACH_REASON_ROOM_DELETED: DetachReason
DETACH_REASON_PRESENCE_TIMEOUT: DetachReason
DETACH_REASON_KICKED: DetachReason

class Room(_message.Message):
    __slots__ = ("room_id", "name", "attributes", "owner_id", "settings", "member_count", "online_count", "last_seq", "version", "created_at", "updated_at")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    ONLINE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    name: str
    attributes: _containers.ScalarMap[str, str]
    owner_id: str
    settings: RoomSettings
    member_count: int
    online_count: int
    last_seq: int
    version: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, room_id: _Optional[str] = ..., name: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., owner_id: _Optional[str] = ..., settings: _Optional[_Union[RoomSettings, _Mapping]] = ..., member_count: _Optional[int] = ..., online_count: _Optional[int] = ..., last_seq: _Optional[int] = ..., version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RoomSettings(_message.Message):
    __slots__ = ("max_members", "member_events", "destroy_when_empty_after", "presence_timeout", "slow_mode_interval", "muted")
    MAX_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MEMBER_EVENTS_FIELD_NUMBER: _ClassVar[int]
    DESTROY_WHEN_EMPTY_AFTER_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    SLOW_MODE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MUTED_FIELD_NUMBER: _ClassVar[int]
    max_members: int
    member_events: MemberEvents
    destroy_when_empty_after: _duration_pb2.Duration
    presence_timeout: _duration_pb2.Duration
    slow_mode_interval: _duration_pb2.Duration
    muted: bool
    def __init__(self, max_members: _Optional[int] = ..., member_events: _Optional[_Union[MemberEvents, str]] = ..., destroy_when_empty_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., presence_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., slow_mode_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., muted: bool = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("user_id", "display_name", "role", "online", "joined_at")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    JOINED_AT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    display_name: str
    role: Role
    online: bool
    joined_at: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., display_name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., online: bool = ..., joined_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("room_id", "seq", "message_id", "sender_id", "sender_name", "kind", "text", "payload", "content_type", "to_user_ids", "client_msg_id", "sent_at", "target_seq", "recalled", "edited_at")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TO_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    TARGET_SEQ_FIELD_NUMBER: _ClassVar[int]
    RECALLED_FIELD_NUMBER: _ClassVar[int]
    EDITED_AT_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    seq: int
    message_id: str
    sender_id: str
    sender_name: str
    kind: MessageKind
    text: str
    payload: bytes
    content_type: str
    to_user_ids: _containers.RepeatedScalarFieldContainer[str]
    client_msg_id: str
    sent_at: _timestamp_pb2.Timestamp
    target_seq: int
    recalled: bool
    edited_at: _timestamp_pb2.Timestamp
    def __init__(self, room_id: _Optional[str] = ..., seq: _Optional[int] = ..., message_id: _Optional[str] = ..., sender_id: _Optional[str] = ..., sender_name: _Optional[str] = ..., kind: _Optional[_Union[MessageKind, str]] = ..., text: _Optional[str] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., to_user_ids: _Optional[_Iterable[str]] = ..., client_msg_id: _Optional[str] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., target_seq: _Optional[int] = ..., recalled: bool = ..., edited_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateRoomRequest(_message.Message):
    __slots__ = ("room_id", "name", "attributes", "settings", "display_name")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    name: str
    attributes: _containers.ScalarMap[str, str]
    settings: RoomSettings
    display_name: str
    def __init__(self, room_id: _Optional[str] = ..., name: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., settings: _Optional[_Union[RoomSettings, _Mapping]] = ..., display_name: _Optional[str] = ...) -> None: ...

class CreateRoomResponse(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: Room
    def __init__(self, room: _Optional[_Union[Room, _Mapping]] = ...) -> None: ...

class JoinRoomRequest(_message.Message):
    __slots__ = ("room_id", "display_name")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    display_name: str
    def __init__(self, room_id: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class JoinRoomResponse(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: Room
    def __init__(self, room: _Optional[_Union[Room, _Mapping]] = ...) -> None: ...

class EnterRoomRequest(_message.Message):
    __slots__ = ("room_id", "name", "attributes", "settings", "display_name")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    name: str
    attributes: _containers.ScalarMap[str, str]
    settings: RoomSettings
    display_name: str
    def __init__(self, room_id: _Optional[str] = ..., name: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., settings: _Optional[_Union[RoomSettings, _Mapping]] = ..., display_name: _Optional[str] = ...) -> None: ...

class EnterRoomResponse(_message.Message):
    __slots__ = ("room", "created")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    room: Room
    created: bool
    def __init__(self, room: _Optional[_Union[Room, _Mapping]] = ..., created: bool = ...) -> None: ...

class LeaveRoomRequest(_message.Message):
    __slots__ = ("room_id",)
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    def __init__(self, room_id: _Optional[str] = ...) -> None: ...

class LeaveRoomResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SwitchRoomRequest(_message.Message):
    __slots__ = ("from_room_id", "to_room_id", "display_name")
    FROM_ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    TO_ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    from_room_id: str
    to_room_id: str
    display_name: str
    def __init__(self, from_room_id: _Optional[str] = ..., to_room_id: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class SwitchRoomResponse(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: Room
    def __init__(self, room: _Optional[_Union[Room, _Mapping]] = ...) -> None: ...

class GetRoomRequest(_message.Message):
    __slots__ = ("room_id",)
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    def __init__(self, room_id: _Optional[str] = ...) -> None: ...

class GetRoomResponse(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: Room
    def __init__(self, room: _Optional[_Union[Room, _Mapping]] = ...) -> None: ...

class ListRoomsRequest(_message.Message):
    __slots__ = ("name", "name_prefix", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    name_prefix: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., name_prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRoomsResponse(_message.Message):
    __slots__ = ("rooms", "next_page_token")
    ROOMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rooms: _containers.RepeatedCompositeFieldContainer[Room]
    next_page_token: str
    def __init__(self, rooms: _Optional[_Iterable[_Union[Room, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListMyRoomsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMyRoomsResponse(_message.Message):
    __slots__ = ("rooms", "next_page_token")
    ROOMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rooms: _containers.RepeatedCompositeFieldContainer[Room]
    next_page_token: str
    def __init__(self, rooms: _Optional[_Iterable[_Union[Room, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateRoomRequest(_message.Message):
    __slots__ = ("room_id", "name", "settings", "set_attributes", "remove_attribute_keys", "expected_version")
    class SetAttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    SET_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    REMOVE_ATTRIBUTE_KEYS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    name: str
    settings: RoomSettings
    set_attributes: _containers.ScalarMap[str, str]
    remove_attribute_keys: _containers.RepeatedScalarFieldContainer[str]
    expected_version: int
    def __init__(self, room_id: _Optional[str] = ..., name: _Optional[str] = ..., settings: _Optional[_Union[RoomSettings, _Mapping]] = ..., set_attributes: _Optional[_Mapping[str, str]] = ..., remove_attribute_keys: _Optional[_Iterable[str]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class UpdateRoomResponse(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: Room
    def __init__(self, room: _Optional[_Union[Room, _Mapping]] = ...) -> None: ...

class SetMemberRoleRequest(_message.Message):
    __slots__ = ("room_id", "user_id", "role")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    role: Role
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ...) -> None: ...

class SetMemberRoleResponse(_message.Message):
    __slots__ = ("member",)
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    member: Member
    def __init__(self, member: _Optional[_Union[Member, _Mapping]] = ...) -> None: ...

class TransferOwnershipRequest(_message.Message):
    __slots__ = ("room_id", "user_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class TransferOwnershipResponse(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: Room
    def __init__(self, room: _Optional[_Union[Room, _Mapping]] = ...) -> None: ...

class KickMemberRequest(_message.Message):
    __slots__ = ("room_id", "user_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class KickMemberResponse(_message.Message):
    __slots__ = ("member",)
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    member: Member
    def __init__(self, member: _Optional[_Union[Member, _Mapping]] = ...) -> None: ...

class BanMemberRequest(_message.Message):
    __slots__ = ("room_id", "user_id", "duration")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    duration: _duration_pb2.Duration
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class BanMemberResponse(_message.Message):
    __slots__ = ("ban",)
    BAN_FIELD_NUMBER: _ClassVar[int]
    ban: Ban
    def __init__(self, ban: _Optional[_Union[Ban, _Mapping]] = ...) -> None: ...

class UnbanMemberRequest(_message.Message):
    __slots__ = ("room_id", "user_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class UnbanMemberResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBansRequest(_message.Message):
    __slots__ = ("room_id", "page_size", "page_token")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    page_size: int
    page_token: str
    def __init__(self, room_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBansResponse(_message.Message):
    __slots__ = ("bans", "next_page_token")
    BANS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    bans: _containers.RepeatedCompositeFieldContainer[Ban]
    next_page_token: str
    def __init__(self, bans: _Optional[_Iterable[_Union[Ban, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class MuteMemberRequest(_message.Message):
    __slots__ = ("room_id", "user_id", "duration")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    duration: _duration_pb2.Duration
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class MuteMemberResponse(_message.Message):
    __slots__ = ("mute",)
    MUTE_FIELD_NUMBER: _ClassVar[int]
    mute: Mute
    def __init__(self, mute: _Optional[_Union[Mute, _Mapping]] = ...) -> None: ...

class UnmuteMemberRequest(_message.Message):
    __slots__ = ("room_id", "user_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class UnmuteMemberResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMutesRequest(_message.Message):
    __slots__ = ("room_id", "page_size", "page_token")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    page_size: int
    page_token: str
    def __init__(self, room_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMutesResponse(_message.Message):
    __slots__ = ("mutes", "next_page_token")
    MUTES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    mutes: _containers.RepeatedCompositeFieldContainer[Mute]
    next_page_token: str
    def __init__(self, mutes: _Optional[_Iterable[_Union[Mute, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Mute(_message.Message):
    __slots__ = ("user_id", "muted_by", "muted_at", "expires_at")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MUTED_BY_FIELD_NUMBER: _ClassVar[int]
    MUTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    muted_by: str
    muted_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., muted_by: _Optional[str] = ..., muted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Ban(_message.Message):
    __slots__ = ("user_id", "banned_by", "banned_at", "expires_at")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    BANNED_BY_FIELD_NUMBER: _ClassVar[int]
    BANNED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    banned_by: str
    banned_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., banned_by: _Optional[str] = ..., banned_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeleteRoomRequest(_message.Message):
    __slots__ = ("room_id",)
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    def __init__(self, room_id: _Optional[str] = ...) -> None: ...

class DeleteRoomResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMembersRequest(_message.Message):
    __slots__ = ("room_id", "online_only", "page_size", "page_token")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    online_only: bool
    page_size: int
    page_token: str
    def __init__(self, room_id: _Optional[str] = ..., online_only: bool = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMembersResponse(_message.Message):
    __slots__ = ("members", "next_page_token")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    next_page_token: str
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SendMessageRequest(_message.Message):
    __slots__ = ("room_id", "kind", "text", "payload", "content_type", "to_user_ids", "client_msg_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TO_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    kind: MessageKind
    text: str
    payload: bytes
    content_type: str
    to_user_ids: _containers.RepeatedScalarFieldContainer[str]
    client_msg_id: str
    def __init__(self, room_id: _Optional[str] = ..., kind: _Optional[_Union[MessageKind, str]] = ..., text: _Optional[str] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., to_user_ids: _Optional[_Iterable[str]] = ..., client_msg_id: _Optional[str] = ...) -> None: ...

class SendMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class RecallMessageRequest(_message.Message):
    __slots__ = ("room_id", "seq")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    seq: int
    def __init__(self, room_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class RecallMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class EditMessageRequest(_message.Message):
    __slots__ = ("room_id", "seq", "text", "payload")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    seq: int
    text: str
    payload: bytes
    def __init__(self, room_id: _Optional[str] = ..., seq: _Optional[int] = ..., text: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class EditMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class BroadcastMessageRequest(_message.Message):
    __slots__ = ("room_ids", "kind", "text", "payload", "content_type")
    ROOM_IDS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    room_ids: _containers.RepeatedScalarFieldContainer[str]
    kind: MessageKind
    text: str
    payload: bytes
    content_type: str
    def __init__(self, room_ids: _Optional[_Iterable[str]] = ..., kind: _Optional[_Union[MessageKind, str]] = ..., text: _Optional[str] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class BroadcastMessageResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BroadcastResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BroadcastResult, _Mapping]]] = ...) -> None: ...

class BroadcastResult(_message.Message):
    __slots__ = ("room_id", "message", "error")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    message: Message
    error: StreamError
    def __init__(self, room_id: _Optional[str] = ..., message: _Optional[_Union[Message, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ...) -> None: ...

class WatchRoomsRequest(_message.Message):
    __slots__ = ("after_position",)
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    after_position: int
    def __init__(self, after_position: _Optional[int] = ...) -> None: ...

class WatchRoomsResponse(_message.Message):
    __slots__ = ("events", "position")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[RoomFeedEvent]
    position: int
    def __init__(self, events: _Optional[_Iterable[_Union[RoomFeedEvent, _Mapping]]] = ..., position: _Optional[int] = ...) -> None: ...

class RoomFeedEvent(_message.Message):
    __slots__ = ("position", "kind", "room_id", "user_id", "by_user_id", "role", "at")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    BY_USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    position: int
    kind: RoomFeedEventKind
    room_id: str
    user_id: str
    by_user_id: str
    role: Role
    at: _timestamp_pb2.Timestamp
    def __init__(self, position: _Optional[int] = ..., kind: _Optional[_Union[RoomFeedEventKind, str]] = ..., room_id: _Optional[str] = ..., user_id: _Optional[str] = ..., by_user_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("room_id", "before_seq", "after_seq", "limit")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    BEFORE_SEQ_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    before_seq: int
    after_seq: int
    limit: int
    def __init__(self, room_id: _Optional[str] = ..., before_seq: _Optional[int] = ..., after_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListMessagesResponse(_message.Message):
    __slots__ = ("messages", "has_more")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    has_more: bool
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., has_more: bool = ...) -> None: ...

class ListenRequest(_message.Message):
    __slots__ = ("rooms",)
    ROOMS_FIELD_NUMBER: _ClassVar[int]
    rooms: _containers.RepeatedCompositeFieldContainer[AttachRoom]
    def __init__(self, rooms: _Optional[_Iterable[_Union[AttachRoom, _Mapping]]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("request_id", "attach", "detach", "send", "ping", "refresh_token")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    attach: AttachRoom
    detach: DetachRoom
    send: SendMessageRequest
    ping: Ping
    refresh_token: RefreshToken
    def __init__(self, request_id: _Optional[str] = ..., attach: _Optional[_Union[AttachRoom, _Mapping]] = ..., detach: _Optional[_Union[DetachRoom, _Mapping]] = ..., send: _Optional[_Union[SendMessageRequest, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., refresh_token: _Optional[_Union[RefreshToken, _Mapping]] = ...) -> None: ...

class RefreshToken(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class AttachRoom(_message.Message):
    __slots__ = ("room_id", "after_seq")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    after_seq: int
    def __init__(self, room_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class DetachRoom(_message.Message):
    __slots__ = ("room_id",)
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    def __init__(self, room_id: _Optional[str] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("request_id", "attached", "detached", "message", "send_ack", "members_joined", "members_left", "room_updated", "room_deleted", "error", "pong", "history_truncated", "token_refreshed")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_FIELD_NUMBER: _ClassVar[int]
    DETACHED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEND_ACK_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_JOINED_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_LEFT_FIELD_NUMBER: _ClassVar[int]
    ROOM_UPDATED_FIELD_NUMBER: _ClassVar[int]
    ROOM_DELETED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    HISTORY_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_REFRESHED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    attached: RoomAttached
    detached: RoomDetached
    message: Message
    send_ack: SendAck
    members_joined: MembersJoined
    members_left: MembersLeft
    room_updated: RoomUpdated
    room_deleted: RoomDeleted
    error: StreamError
    pong: Pong
    history_truncated: HistoryTruncated
    token_refreshed: TokenRefreshed
    def __init__(self, request_id: _Optional[str] = ..., attached: _Optional[_Union[RoomAttached, _Mapping]] = ..., detached: _Optional[_Union[RoomDetached, _Mapping]] = ..., message: _Optional[_Union[Message, _Mapping]] = ..., send_ack: _Optional[_Union[SendAck, _Mapping]] = ..., members_joined: _Optional[_Union[MembersJoined, _Mapping]] = ..., members_left: _Optional[_Union[MembersLeft, _Mapping]] = ..., room_updated: _Optional[_Union[RoomUpdated, _Mapping]] = ..., room_deleted: _Optional[_Union[RoomDeleted, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., history_truncated: _Optional[_Union[HistoryTruncated, _Mapping]] = ..., token_refreshed: _Optional[_Union[TokenRefreshed, _Mapping]] = ...) -> None: ...

class HistoryTruncated(_message.Message):
    __slots__ = ("room_id", "resumes_at_seq")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    RESUMES_AT_SEQ_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    resumes_at_seq: int
    def __init__(self, room_id: _Optional[str] = ..., resumes_at_seq: _Optional[int] = ...) -> None: ...

class TokenRefreshed(_message.Message):
    __slots__ = ("expires_at",)
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RoomAttached(_message.Message):
    __slots__ = ("room", "history_truncated")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    HISTORY_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    room: Room
    history_truncated: bool
    def __init__(self, room: _Optional[_Union[Room, _Mapping]] = ..., history_truncated: bool = ...) -> None: ...

class RoomDetached(_message.Message):
    __slots__ = ("room_id", "reason")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    reason: DetachReason
    def __init__(self, room_id: _Optional[str] = ..., reason: _Optional[_Union[DetachReason, str]] = ...) -> None: ...

class SendAck(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class MembersJoined(_message.Message):
    __slots__ = ("room_id", "members", "member_count")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    members: _containers.RepeatedCompositeFieldContainer[Member]
    member_count: int
    def __init__(self, room_id: _Optional[str] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., member_count: _Optional[int] = ...) -> None: ...

class MembersLeft(_message.Message):
    __slots__ = ("room_id", "members", "member_count", "kicked_by")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    KICKED_BY_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    members: _containers.RepeatedCompositeFieldContainer[Member]
    member_count: int
    kicked_by: str
    def __init__(self, room_id: _Optional[str] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., member_count: _Optional[int] = ..., kicked_by: _Optional[str] = ...) -> None: ...

class RoomUpdated(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: Room
    def __init__(self, room: _Optional[_Union[Room, _Mapping]] = ...) -> None: ...

class RoomDeleted(_message.Message):
    __slots__ = ("room_id",)
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    def __init__(self, room_id: _Optional[str] = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "reason", "message", "retry_after")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    message: str
    retry_after: _duration_pb2.Duration
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
