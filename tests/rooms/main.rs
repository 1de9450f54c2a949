//! Room lifecycle over a real gRPC connection: create, join, enter, leave, switch, get,
//! list, update, delete, list members — on SQLite and on PostgreSQL. One test binary, a
//! module per group of calls.

use chatroom_testkit as common;
use chatroom_testkit::on_both_stores;

mod admin;
mod concurrency;
mod creating;
mod joining;
mod moderation;
mod mutes;
mod sanctions;
mod slow_mode;

use chatroom::pb;
use common::create;

/// A CreateRoom request for `room_id` that admits at most `max_members`.
fn limited(room_id: &str, max_members: u32) -> pb::CreateRoomRequest {
    pb::CreateRoomRequest {
        settings: Some(pb::RoomSettings {
            max_members,
            ..Default::default()
        }),
        ..create(room_id)
    }
}

/// Makes `user` a moderator of `room` (as its owner or an admin).
fn moderator(room: &str, user: &str) -> pb::SetMemberRoleRequest {
    pb::SetMemberRoleRequest {
        room_id: room.into(),
        user_id: user.into(),
        role: pb::Role::Moderator as i32,
    }
}

fn switch(from: &str, to: &str) -> pb::SwitchRoomRequest {
    pb::SwitchRoomRequest {
        from_room_id: from.into(),
        to_room_id: to.into(),
        display_name: "Mover".into(),
    }
}
