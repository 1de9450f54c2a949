//! Member roles and ownership: SetMemberRole and TransferOwnership — who may, what
//! they change, what attached streams see, and that it is all stored.

use tonic::Code;

use crate::common::{
    Backend, Ev, TestApp, all_members, assert_bad_request, assert_error, get_room,
};
use crate::on_both_stores;
use chatroom::pb;

on_both_stores!(
    roles_are_given_and_taken_by_the_owner,
    ownership_moves_to_another_member,
    admins_manage_rooms_they_are_not_in,
    roles_and_owners_survive_a_restart,
);

fn set_role(room: &str, user: &str, role: pb::Role) -> pb::SetMemberRoleRequest {
    pb::SetMemberRoleRequest {
        room_id: room.into(),
        user_id: user.into(),
        role: role as i32,
    }
}

fn transfer(room: &str, user: &str) -> pb::TransferOwnershipRequest {
    pb::TransferOwnershipRequest {
        room_id: room.into(),
        user_id: user.into(),
    }
}

/// Each member's role, by user id.
async fn roles(app: &TestApp, room: &str) -> Vec<(String, pb::Role)> {
    let mut client = app.client("owner").await;
    all_members(&mut client, room)
        .await
        .into_iter()
        .map(|m| (m.user_id.clone(), m.role()))
        .collect()
}

async fn roles_are_given_and_taken_by_the_owner(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    app.create_room("owner", "r").await;
    app.join("bob", "r").await;
    app.join("carol", "r").await;

    let member = owner
        .set_member_role(set_role("r", "bob", pb::Role::Moderator))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(
        (member.user_id.as_str(), member.role()),
        ("bob", pb::Role::Moderator)
    );
    assert_eq!(
        roles(&app, "r").await,
        [
            ("bob".to_string(), pb::Role::Moderator),
            ("carol".to_string(), pb::Role::Member),
            ("owner".to_string(), pb::Role::Owner),
        ]
    );

    // A moderator does not hand out roles; nor does a member; an outsider is no
    // member at all.
    let mut bob = app.client("bob").await;
    let err = bob
        .set_member_role(set_role("r", "carol", pb::Role::Moderator))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_ROOM_OWNER");
    let mut carol = app.client("carol").await;
    let err = carol
        .set_member_role(set_role("r", "carol", pb::Role::Moderator))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_ROOM_OWNER");
    let mut stranger = app.client("stranger").await;
    let err = stranger
        .set_member_role(set_role("r", "bob", pb::Role::Member))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_A_MEMBER");

    // Bad targets: no such member, no such room, the owner, the owner's role.
    let err = owner
        .set_member_role(set_role("r", "stranger", pb::Role::Moderator))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "MEMBER_NOT_FOUND");
    let err = owner
        .set_member_role(set_role("nowhere", "bob", pb::Role::Moderator))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "ROOM_NOT_FOUND");
    let err = owner
        .set_member_role(set_role("r", "owner", pb::Role::Member))
        .await
        .unwrap_err();
    assert_bad_request(&err, "user_id");
    for role in [pb::Role::Owner, pb::Role::Unspecified] {
        let err = owner
            .set_member_role(set_role("r", "bob", role))
            .await
            .unwrap_err();
        assert_bad_request(&err, "role");
    }
    let err = owner
        .set_member_role(pb::SetMemberRoleRequest {
            role: 99,
            ..set_role("r", "bob", pb::Role::Member)
        })
        .await
        .unwrap_err();
    assert_bad_request(&err, "role");

    // Taken back: a member again. Nothing refused above changed anything.
    owner
        .set_member_role(set_role("r", "bob", pb::Role::Member))
        .await
        .unwrap();
    assert_eq!(
        roles(&app, "r").await,
        [
            ("bob".to_string(), pb::Role::Member),
            ("carol".to_string(), pb::Role::Member),
            ("owner".to_string(), pb::Role::Owner),
        ]
    );
}

async fn ownership_moves_to_another_member(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    let created = app.create_room("owner", "r").await;
    app.join("bob", "r").await;
    let mut watcher = app.attached("bob", "r").await;

    // Only to a member, only by the owner.
    let err = owner
        .transfer_ownership(transfer("r", "stranger"))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "MEMBER_NOT_FOUND");
    let mut bob = app.client("bob").await;
    let err = bob
        .transfer_ownership(transfer("r", "bob"))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_ROOM_OWNER");

    let room = owner
        .transfer_ownership(transfer("r", "bob"))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!(room.owner_id, "bob");
    assert_eq!(room.version, created.version + 1);
    assert_eq!(
        roles(&app, "r").await,
        [
            ("bob".to_string(), pb::Role::Owner),
            ("owner".to_string(), pb::Role::Member),
        ]
    );
    // Attached streams learn of it as of any change to the room.
    let updated = loop {
        match watcher.event().await {
            Ev::RoomUpdated(updated) => break updated.room.unwrap(),
            Ev::MembersJoined(_) => continue,
            other => panic!("expected the room update, got {other:?}"),
        }
    };
    assert_eq!(updated.owner_id, "bob");

    // The new owner may do what owners do; the old one no longer.
    let rename = pb::UpdateRoomRequest {
        room_id: "r".into(),
        name: Some("bob's".into()),
        ..Default::default()
    };
    let err = owner.update_room(rename.clone()).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "NOT_ROOM_OWNER");
    bob.update_room(rename).await.unwrap();
    // A transfer to the owner changes nothing.
    let same = bob
        .transfer_ownership(transfer("r", "bob"))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!(same.version, get_room(&mut bob, "r").await.unwrap().version);
}

async fn admins_manage_rooms_they_are_not_in(backend: Backend) {
    let app = TestApp::with(backend, |c| c.admin_users = vec!["root".into()]).await;
    let mut root = app.client("root").await;
    app.create_room("owner", "r").await;
    app.join("bob", "r").await;
    root.set_member_role(set_role("r", "bob", pb::Role::Moderator))
        .await
        .unwrap();
    let room = root
        .transfer_ownership(transfer("r", "bob"))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!(room.owner_id, "bob");
    assert_eq!(
        roles(&app, "r").await,
        [
            ("bob".to_string(), pb::Role::Owner),
            ("owner".to_string(), pb::Role::Member),
        ]
    );
}

async fn roles_and_owners_survive_a_restart(backend: Backend) {
    let mut app = TestApp::start(backend).await;
    let mut owner = app.client("owner").await;
    app.create_room("owner", "r").await;
    app.join("bob", "r").await;
    app.join("carol", "r").await;
    owner
        .set_member_role(set_role("r", "carol", pb::Role::Moderator))
        .await
        .unwrap();
    owner
        .transfer_ownership(transfer("r", "bob"))
        .await
        .unwrap();
    app.stop_server().await;
    app.start_again().await;
    let mut bob = app.client("bob").await;
    assert_eq!(get_room(&mut bob, "r").await.unwrap().owner_id, "bob");
    assert_eq!(
        roles(&app, "r").await,
        [
            ("bob".to_string(), pb::Role::Owner),
            ("carol".to_string(), pb::Role::Moderator),
            ("owner".to_string(), pb::Role::Member),
        ]
    );
}
