//! Who may do what, as a matrix: every RPC and every stream frame, tried by the
//! room's owner, a moderator, a member, an outsider and an admin — once with tokens,
//! once with `x-user-id` headers — each on a room of its own, against what the rules
//! say.

use chatroom::domain::Clock;
use chatroom::pb;
use serde_json::json;

use crate::common::{Backend, Client, Ev, Sub, TestApp, TestServer, chat, create, join};
use crate::{claims, jwt_app_with, token, with};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Owner,
    Moderator,
    Member,
    Outsider,
    Admin,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    GetRoom,
    ListRooms,
    ListMyRooms,
    JoinRoom,
    EnterRoom,
    LeaveRoom,
    SwitchRoom,
    UpdateAttributes,
    UpdateName,
    UpdateSettings,
    DeleteRoom,
    ListMembers,
    SendMessage,
    ListMessages,
    RecallMessage,
    EditMessage,
    BroadcastMessage,
    WatchRooms,
    StreamAttach,
    StreamSend,
    StreamDetach,
    StreamPing,
    SetMemberRole,
    TransferOwnership,
    KickMember,
    BanMember,
    UnbanMember,
    ListBans,
    MuteMember,
    UnmuteMember,
    ListMutes,
}

const OPS: [Op; 31] = [
    Op::GetRoom,
    Op::ListRooms,
    Op::ListMyRooms,
    Op::JoinRoom,
    Op::EnterRoom,
    Op::LeaveRoom,
    Op::SwitchRoom,
    Op::UpdateAttributes,
    Op::UpdateName,
    Op::UpdateSettings,
    Op::DeleteRoom,
    Op::ListMembers,
    Op::SendMessage,
    Op::ListMessages,
    Op::RecallMessage,
    Op::EditMessage,
    Op::BroadcastMessage,
    Op::WatchRooms,
    Op::StreamAttach,
    Op::StreamSend,
    Op::StreamDetach,
    Op::StreamPing,
    Op::SetMemberRole,
    Op::TransferOwnership,
    Op::KickMember,
    Op::BanMember,
    Op::UnbanMember,
    Op::ListBans,
    Op::MuteMember,
    Op::UnmuteMember,
    Op::ListMutes,
];

/// What the rules say: `None` allowed, else the refusal's reason.
fn expected(who: Who, op: Op) -> Option<&'static str> {
    use Op::*;
    let member = matches!(who, Who::Owner | Who::Moderator | Who::Member | Who::Admin);
    let owner = matches!(who, Who::Owner | Who::Admin);
    match op {
        // Open to everyone: rooms are public to read and to join; leaving is
        // idempotent; a stream and its pings need no room.
        GetRoom | ListRooms | ListMyRooms | JoinRoom | EnterRoom | LeaveRoom | StreamPing => None,
        // Moving out of a room needs being in it: an admin acts anywhere, but is in
        // no room it did not join.
        SwitchRoom => {
            (!matches!(who, Who::Owner | Who::Moderator | Who::Member)).then_some("NOT_A_MEMBER")
        }
        // Members (and admins) only.
        UpdateAttributes | ListMembers | SendMessage | ListMessages | StreamAttach | StreamSend
        | StreamDetach => (!member).then_some(if op == StreamDetach {
            "NOT_ATTACHED"
        } else {
            "NOT_A_MEMBER"
        }),
        // The owner (and admins) only; an outsider is told it is no member first.
        UpdateName | UpdateSettings | SetMemberRole | TransferOwnership => match (owner, member) {
            (true, _) => None,
            (false, true) => Some("NOT_ROOM_OWNER"),
            (false, false) => Some("NOT_A_MEMBER"),
        },
        DeleteRoom => (!owner).then_some("NOT_ROOM_OWNER"),
        // Admins only, whatever their standing in the rooms.
        BroadcastMessage | WatchRooms => (who != Who::Admin).then_some("NOT_AN_ADMIN"),
        // Moderators too (kicks, bans and mutes aim at `target`, a plain member, and
        // recalls and edits at its message).
        RecallMessage | EditMessage | KickMember | BanMember | UnbanMember | ListBans
        | MuteMember | UnmuteMember | ListMutes => match who {
            Who::Owner | Who::Moderator | Who::Admin => None,
            Who::Member => Some("NOT_A_MODERATOR"),
            Who::Outsider => Some("NOT_A_MEMBER"),
        },
    }
}

/// Runs `op` on `room` as `client`: `Ok` or the refusal's reason.
async fn run(client: &mut Client, op: Op, room: &str) -> Result<(), String> {
    let reason = |status: tonic::Status| -> String {
        use tonic_types::StatusExt;
        status
            .get_details_error_info()
            .map(|i| i.reason)
            .unwrap_or_else(|| format!("{:?}", status.code()))
    };
    let id = room.to_string();
    let unary = match op {
        Op::GetRoom => client
            .get_room(pb::GetRoomRequest { room_id: id })
            .await
            .map(drop),
        Op::ListRooms => client
            .list_rooms(pb::ListRoomsRequest::default())
            .await
            .map(drop),
        Op::ListMyRooms => client
            .list_my_rooms(pb::ListMyRoomsRequest::default())
            .await
            .map(drop),
        Op::JoinRoom => client.join_room(join(room)).await.map(drop),
        Op::EnterRoom => client
            .enter_room(pb::EnterRoomRequest {
                room_id: id,
                ..Default::default()
            })
            .await
            .map(drop),
        Op::LeaveRoom => client
            .leave_room(pb::LeaveRoomRequest { room_id: id })
            .await
            .map(drop),
        Op::SwitchRoom => client
            .switch_room(pb::SwitchRoomRequest {
                from_room_id: id,
                to_room_id: "elsewhere".into(),
                display_name: String::new(),
            })
            .await
            .map(drop),
        Op::UpdateAttributes => client
            .update_room(pb::UpdateRoomRequest {
                room_id: id,
                set_attributes: [("k".to_string(), "v".to_string())].into(),
                ..Default::default()
            })
            .await
            .map(drop),
        Op::UpdateName => client
            .update_room(pb::UpdateRoomRequest {
                room_id: id,
                name: Some("renamed".into()),
                ..Default::default()
            })
            .await
            .map(drop),
        Op::UpdateSettings => client
            .update_room(pb::UpdateRoomRequest {
                room_id: id,
                settings: Some(pb::RoomSettings {
                    max_members: 50,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(drop),
        Op::DeleteRoom => client
            .delete_room(pb::DeleteRoomRequest { room_id: id })
            .await
            .map(drop),
        Op::ListMembers => client
            .list_members(pb::ListMembersRequest {
                room_id: id,
                ..Default::default()
            })
            .await
            .map(drop),
        Op::SendMessage => client.send_message(chat(room, "hi")).await.map(drop),
        Op::ListMessages => client
            .list_messages(pb::ListMessagesRequest {
                room_id: id,
                ..Default::default()
            })
            .await
            .map(drop),
        Op::RecallMessage => client
            .recall_message(pb::RecallMessageRequest {
                room_id: id,
                seq: 1,
            })
            .await
            .map(drop),
        Op::EditMessage => client
            .edit_message(pb::EditMessageRequest {
                room_id: id,
                seq: 1,
                text: "edited".into(),
                payload: Vec::new(),
            })
            .await
            .map(drop),
        Op::BroadcastMessage => client
            .broadcast_message(pb::BroadcastMessageRequest {
                room_ids: vec![id],
                text: "to all".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        // Opened: its first response says where it starts.
        Op::WatchRooms => match client
            .watch_rooms(pb::WatchRoomsRequest {
                after_position: None,
            })
            .await
        {
            Ok(watch) => watch.into_inner().message().await.map(drop),
            Err(status) => Err(status),
        },
        Op::SetMemberRole => client
            .set_member_role(pb::SetMemberRoleRequest {
                room_id: id,
                user_id: "member".into(),
                role: pb::Role::Moderator as i32,
            })
            .await
            .map(drop),
        Op::TransferOwnership => client
            .transfer_ownership(pb::TransferOwnershipRequest {
                room_id: id,
                user_id: "member".into(),
            })
            .await
            .map(drop),
        Op::KickMember => client
            .kick_member(pb::KickMemberRequest {
                room_id: id,
                user_id: "target".into(),
            })
            .await
            .map(drop),
        Op::BanMember => client
            .ban_member(pb::BanMemberRequest {
                room_id: id,
                user_id: "target".into(),
                duration: None,
            })
            .await
            .map(drop),
        Op::UnbanMember => client
            .unban_member(pb::UnbanMemberRequest {
                room_id: id,
                user_id: "target".into(),
            })
            .await
            .map(drop),
        Op::ListBans => client
            .list_bans(pb::ListBansRequest {
                room_id: id,
                ..Default::default()
            })
            .await
            .map(drop),
        Op::MuteMember => client
            .mute_member(pb::MuteMemberRequest {
                room_id: id,
                user_id: "target".into(),
                duration: None,
            })
            .await
            .map(drop),
        Op::UnmuteMember => client
            .unmute_member(pb::UnmuteMemberRequest {
                room_id: id,
                user_id: "target".into(),
            })
            .await
            .map(drop),
        Op::ListMutes => client
            .list_mutes(pb::ListMutesRequest {
                room_id: id,
                ..Default::default()
            })
            .await
            .map(drop),
        Op::StreamAttach | Op::StreamSend | Op::StreamDetach | Op::StreamPing => {
            return stream_op(client, op, room).await;
        }
    };
    unary.map_err(reason)
}

/// A stream frame's answer: `Ok` or its StreamError's reason.
async fn stream_op(client: &mut Client, op: Op, room: &str) -> Result<(), String> {
    let mut sub = Sub::open(client).await;
    let answer = match op {
        Op::StreamAttach => sub.attach(room, None).await,
        Op::StreamSend => sub.send(chat(room, "from a stream")).await,
        Op::StreamDetach => {
            let id = sub
                .request(pb::subscribe_request::Frame::Detach(pb::DetachRoom {
                    room_id: room.into(),
                }))
                .await;
            sub.reply(&id).await
        }
        Op::StreamPing => {
            let id = sub
                .request(pb::subscribe_request::Frame::Ping(pb::Ping {}))
                .await;
            sub.reply(&id).await
        }
        _ => unreachable!("not a stream frame"),
    };
    match answer {
        Ev::Error(e) => Err(e.reason),
        _ => Ok(()),
    }
}

/// How callers say who they are.
#[derive(Clone, Copy)]
enum Identity {
    /// `--auth jwt`: a bearer token each; the admin by the token's `admin` role.
    Token,
    /// `--auth header`: `x-user-id`; the admin by `--admin-users`.
    Header,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_and_frame_by_every_kind_of_caller_with_tokens() {
    every_rpc_and_frame_by_every_kind_of_caller(Identity::Token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_and_frame_by_every_kind_of_caller_with_user_headers() {
    every_rpc_and_frame_by_every_kind_of_caller(Identity::Header).await;
}

/// A client of `server` acting as `user`, identified as `by` says.
async fn caller(server: &TestServer, by: Identity, user: &str) -> Client {
    match by {
        Identity::Token if user == "admin" => {
            server.token_client(&token(&with(claims(user), json!({"roles": ["admin"]}))))
        }
        Identity::Token => server.token_client(&token(&claims(user))),
        Identity::Header => server.client(user).await,
    }
}

async fn every_rpc_and_frame_by_every_kind_of_caller(by: Identity) {
    // Owner, moderator and member are in a room per case: more than the default 100.
    let app = match by {
        Identity::Token => {
            jwt_app_with(Backend::Sqlite, Clock::system(), |c| {
                c.max_rooms_per_user = 500
            })
            .await
        }
        Identity::Header => {
            TestApp::with(Backend::Sqlite, |c| {
                c.max_rooms_per_user = 500;
                c.admin_users = vec!["admin".into()];
            })
            .await
        }
    };
    let server = app.server();
    let mut owner = caller(server, by, "owner").await;
    let mut moderator = caller(server, by, "moderator").await;
    let mut member = caller(server, by, "member").await;
    let mut outsider = caller(server, by, "outsider").await;
    let mut admin = caller(server, by, "admin").await;
    owner.create_room(create("elsewhere")).await.unwrap();
    let mut failures = Vec::new();
    for (n, op) in OPS.iter().enumerate() {
        for (who, client) in [
            (Who::Owner, &mut owner),
            (Who::Moderator, &mut moderator),
            (Who::Member, &mut member),
            (Who::Outsider, &mut outsider),
            (Who::Admin, &mut admin),
        ] {
            // A fresh room for each case: owner, moderator, member and target (whom
            // kicks, bans and mutes aim at) are in it, the others not (the admin neither: it
            // acts by its role).
            let room = format!("m{n}-{who:?}").to_lowercase();
            let mut owner_of = caller(server, by, "owner").await;
            owner_of.create_room(create(&room)).await.unwrap();
            for user in ["moderator", "member", "target"] {
                let mut joining = caller(server, by, user).await;
                joining.join_room(join(&room)).await.unwrap();
                if user == "target" && matches!(op, Op::RecallMessage | Op::EditMessage) {
                    joining.send_message(chat(&room, "mine")).await.unwrap();
                }
            }
            owner_of
                .set_member_role(pb::SetMemberRoleRequest {
                    room_id: room.clone(),
                    user_id: "moderator".into(),
                    role: pb::Role::Moderator as i32,
                })
                .await
                .unwrap();
            if *op == Op::StreamDetach && who != Who::Outsider {
                // Detach needs the room attached on the same stream first.
                let mut sub = Sub::open(client).await;
                sub.attached(&room, None).await;
                let id = sub
                    .request(pb::subscribe_request::Frame::Detach(pb::DetachRoom {
                        room_id: room.clone(),
                    }))
                    .await;
                let got = match sub.reply(&id).await {
                    Ev::Error(e) => Err(e.reason),
                    _ => Ok(()),
                };
                if got != Ok(()) {
                    failures.push(format!("{who:?} {op:?}: expected allowed, got {got:?}"));
                }
                continue;
            }
            let got = run(client, *op, &room).await;
            let want = expected(who, *op).map(str::to_string).map_or(Ok(()), Err);
            if got != want {
                failures.push(format!("{who:?} {op:?}: expected {want:?}, got {got:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
