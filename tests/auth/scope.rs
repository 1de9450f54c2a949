//! The `rooms` claim: a token limited to some rooms may create, join, enter, switch
//! to and attach only those (others: PERMISSION_DENIED `ROOM_NOT_IN_TOKEN`, nothing
//! written); what it may do inside a room it is in is unchanged.

use chatroom::pb;
use serde_json::json;
use tonic::Code;

use crate::common::{self, Backend, Ev, Sub, assert_error, create, join};
use crate::{claims, jwt_app, token, with};

crate::on_both_stores!(the_rooms_claim_limits_which_rooms_a_token_reaches);

async fn the_rooms_claim_limits_which_rooms_a_token_reaches(backend: Backend) {
    let app = jwt_app(backend).await;
    let server = app.server();
    let mut owner = server.token_client(&token(&claims("owner")));
    owner.create_room(create("other")).await.unwrap();
    owner.create_room(create("team-a")).await.unwrap();
    let scoped = with(claims("viewer"), json!({"rooms": ["live-1", "team-*"]}));
    let mut viewer = server.token_client(&token(&scoped));
    let not_in_token = |status: tonic::Status| {
        assert_error(&status, Code::PermissionDenied, "ROOM_NOT_IN_TOKEN");
    };

    // Allowed: an exact id and a prefix.
    viewer.create_room(create("live-1")).await.unwrap();
    viewer.join_room(join("team-a")).await.unwrap();
    viewer
        .enter_room(pb::EnterRoomRequest {
            room_id: "team-b".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Refused, and nothing written.
    not_in_token(viewer.create_room(create("live-2")).await.unwrap_err());
    not_in_token(viewer.join_room(join("other")).await.unwrap_err());
    not_in_token(
        viewer
            .enter_room(pb::EnterRoomRequest {
                room_id: "elsewhere".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    );
    not_in_token(
        viewer
            .switch_room(pb::SwitchRoomRequest {
                from_room_id: "team-a".into(),
                to_room_id: "other".into(),
                display_name: String::new(),
            })
            .await
            .unwrap_err(),
    );
    for missing in ["live-2", "elsewhere"] {
        let status = common::get_room(&mut owner, missing).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{missing} was not created");
    }
    assert_eq!(
        common::member_ids(&owner, "other").await,
        ["owner"],
        "the viewer joined nothing it may not"
    );
    assert_eq!(
        common::member_ids(&owner, "team-a").await,
        ["owner", "viewer"],
        "the failed switch left the viewer where it was"
    );

    // Streams: a room in the token attaches; one outside is refused, even for an
    // admin whose token is limited.
    let mut sub = Sub::open(&mut viewer).await;
    sub.attached("live-1", None).await;
    match sub.attach("other", None).await {
        Ev::Error(e) => assert_eq!(e.reason, "ROOM_NOT_IN_TOKEN", "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let limited_admin = with(
        claims("ops"),
        json!({"roles": ["admin"], "rooms": ["live-*"]}),
    );
    let mut ops = server.token_client(&token(&limited_admin));
    not_in_token(ops.join_room(join("other")).await.unwrap_err());
    let mut ops_sub = Sub::open(&mut ops).await;
    ops_sub.attached("live-1", None).await;

    // Inside its rooms a scoped token acts as any member.
    viewer
        .send_message(common::chat("live-1", "hello"))
        .await
        .unwrap();
    viewer
        .leave_room(pb::LeaveRoomRequest {
            room_id: "team-a".into(),
        })
        .await
        .unwrap();
}
