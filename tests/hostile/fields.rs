//! Hostile text in every field a client controls — metadata, room ids, names, display
//! names, attribute keys and values, message text — and oversized attribute sets:
//! each is refused with the field it is about, before anything is written, or stored
//! and read back exactly as sent (text that merely looks like SQL).

use chatroom::pb;
use pb::chat_room_service_client::ChatRoomServiceClient;
use tonic::Code;

use crate::bad_input::{RawCodec, with_bad_utf8};
use crate::common::{
    self, Backend, Ev, TestApp, assert_bad_request, assert_error, chat, create, enter, get_room,
    join, member_ids,
};
use crate::on_both_stores;

on_both_stores!(
    hostile_text_in_any_field_changes_nothing,
    ten_thousand_attributes_are_refused_whole,
);

/// A GetRoom with `x-user-id` set to exactly these bytes.
async fn get_room_as(app: &TestApp, user_id: &[u8]) -> tonic::Status {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-user-id",
        http::HeaderValue::from_bytes(user_id).expect("a header value HTTP/2 can carry"),
    );
    let request = tonic::Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(headers),
        tonic::Extensions::default(),
        pb::GetRoomRequest {
            room_id: "r".into(),
        },
    );
    ChatRoomServiceClient::new(app.channel().await)
        .get_room(request)
        .await
        .expect_err("refused")
}

async fn hostile_text_in_any_field_changes_nothing(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    app.create_room("alice", "r").await;

    // Metadata: a user id with a space, a tab, bytes that are not ASCII, or nothing.
    for user_id in [&b"al ice"[..], b"al\tice", b"al\xffice", b"\xc3\xa9", b""] {
        let status = get_room_as(&app, user_id).await;
        assert_error(&status, Code::Unauthenticated, "UNAUTHENTICATED");
    }

    // Room ids: only [A-Za-z0-9._:-], in every call that names one.
    for id in [
        "r\n",
        "r\u{7}",
        "r é",
        "r\u{202e}",
        "../r",
        "r;drop",
        "r'--",
        "%",
        "r\0",
    ] {
        let bad = |status: tonic::Status| assert_bad_request(&status, "room_id");
        bad(alice.create_room(create(id)).await.unwrap_err());
        bad(alice.join_room(join(id)).await.unwrap_err());
        bad(alice.enter_room(enter(id)).await.unwrap_err());
        bad(get_room(&mut alice, id).await.unwrap_err());
        bad(alice.send_message(chat(id, "hi")).await.unwrap_err());
        let update = pb::UpdateRoomRequest {
            room_id: id.into(),
            name: Some("x".into()),
            ..Default::default()
        };
        bad(alice.update_room(update).await.unwrap_err());
        let delete = pb::DeleteRoomRequest { room_id: id.into() };
        bad(alice.delete_room(delete).await.unwrap_err());
    }
    let mut sub = app.attached("alice", "r").await;
    match sub.attach("r\u{1b}", None).await {
        Ev::Error(e) => assert_eq!(e.reason, "INVALID_ARGUMENT", "{e:?}"),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }

    // Names and display names: no control characters (C0, DEL or C1).
    for name in [
        "a\u{7}b",
        "line\nbreak",
        "\u{1b}[31mred",
        "del\u{7f}",
        "c1\u{85}",
    ] {
        let request = pb::CreateRoomRequest {
            name: name.into(),
            ..create("named")
        };
        assert_bad_request(&alice.create_room(request).await.unwrap_err(), "name");
        let request = pb::CreateRoomRequest {
            display_name: name.into(),
            ..create("named")
        };
        assert_bad_request(
            &alice.create_room(request).await.unwrap_err(),
            "display_name",
        );
        let request = pb::JoinRoomRequest {
            display_name: name.into(),
            ..join("r")
        };
        assert_bad_request(&alice.join_room(request).await.unwrap_err(), "display_name");
        let update = pb::UpdateRoomRequest {
            room_id: "r".into(),
            name: Some(name.into()),
            ..Default::default()
        };
        assert_bad_request(&alice.update_room(update).await.unwrap_err(), "name");
    }

    // Attribute keys: no control characters; values: free text but no NUL.
    for (key, value) in [("k\n", "v"), ("\u{85}", "v"), ("k\u{0}", "v"), ("k", "v\0")] {
        let mut request = create("attrs");
        request.attributes.insert(key.into(), value.into());
        assert_bad_request(&alice.create_room(request).await.unwrap_err(), "attributes");
        let update = pb::UpdateRoomRequest {
            room_id: "r".into(),
            set_attributes: [(key.to_string(), value.to_string())].into(),
            ..Default::default()
        };
        assert_bad_request(
            &alice.update_room(update).await.unwrap_err(),
            "set_attributes",
        );
    }

    // Strings that are not UTF-8 at all, in a name and in an attribute key.
    let channel = app.channel().await;
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut attribute = Vec::new();
    prost::encoding::bytes::encode(3, &with_bad_utf8(1).to_vec(), &mut attribute);
    for body in [with_bad_utf8(2), bytes::Bytes::from(attribute)] {
        let mut request = tonic::Request::new(body);
        request
            .metadata_mut()
            .insert("x-user-id", "alice".parse().unwrap());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<_, pb::CreateRoomResponse, _>(
                request,
                "/chatroom.v1.ChatRoomService/CreateRoom".parse().unwrap(),
                RawCodec::<pb::CreateRoomResponse>::default(),
            )
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    }

    // Text that looks like SQL is only text: stored and read back as sent, and the
    // tables it names are still there.
    let sql = "'); DROP TABLE messages; -- \" OR 1=1 \\ %_";
    let request = pb::CreateRoomRequest {
        name: sql.into(),
        display_name: sql.into(),
        attributes: [(sql.to_string(), sql.to_string())].into(),
        ..create("sql")
    };
    let room = alice
        .create_room(request)
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!(
        (room.name.as_str(), room.attributes[sql].as_str()),
        (sql, sql)
    );
    alice.send_message(chat("sql", sql)).await.unwrap();
    let stored = common::history(&mut alice, "sql").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].text.as_str(), stored[0].sender_name.as_str()),
        (sql, sql)
    );
    let found = alice
        .list_rooms(pb::ListRoomsRequest {
            name: sql.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert_eq!(found.len(), 1, "an exact-name filter matches the one room");
    let none = alice
        .list_rooms(pb::ListRoomsRequest {
            name_prefix: "%".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert!(none.is_empty(), "a prefix of % is a literal %: {none:?}");

    // Nothing refused was written: r is as created, alone with "sql".
    let r = get_room(&mut alice, "r").await.unwrap();
    assert_eq!(r.version, 1, "r was never changed: {r:?}");
    assert!(r.attributes.is_empty());
    assert_eq!(member_ids(&alice, "r").await, ["alice"]);
    assert!(common::history(&mut alice, "r").await.is_empty());
    let rooms = alice
        .list_rooms(pb::ListRoomsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .rooms;
    let mut ids: Vec<_> = rooms.into_iter().map(|r| r.room_id).collect();
    ids.sort();
    assert_eq!(ids, ["r", "sql"]);
}

/// 10,000 attributes (about 100 KB, under the request size limit) are refused as a
/// whole on every call that takes attributes, and the room keeps what it had.
async fn ten_thousand_attributes_are_refused_whole(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut alice = app.client("alice").await;
    let many: std::collections::HashMap<String, String> = (0..10_000)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();

    let request = pb::CreateRoomRequest {
        attributes: many.clone(),
        ..create("big")
    };
    assert_bad_request(&alice.create_room(request).await.unwrap_err(), "attributes");
    let request = pb::EnterRoomRequest {
        attributes: many.clone(),
        ..enter("big")
    };
    assert_bad_request(&alice.enter_room(request).await.unwrap_err(), "attributes");
    assert_error(
        &get_room(&mut alice, "big").await.unwrap_err(),
        Code::NotFound,
        "ROOM_NOT_FOUND",
    );

    let request = pb::CreateRoomRequest {
        attributes: [("topic".to_string(), "rust".to_string())].into(),
        ..create("big")
    };
    alice.create_room(request).await.unwrap();
    let update = pb::UpdateRoomRequest {
        room_id: "big".into(),
        set_attributes: many.clone(),
        ..Default::default()
    };
    assert_bad_request(
        &alice.update_room(update).await.unwrap_err(),
        "set_attributes",
    );
    let update = pb::UpdateRoomRequest {
        room_id: "big".into(),
        remove_attribute_keys: many.keys().cloned().chain(["topic".into()]).collect(),
        ..Default::default()
    };
    assert_bad_request(
        &alice.update_room(update).await.unwrap_err(),
        "remove_attribute_keys",
    );
    let room = get_room(&mut alice, "big").await.unwrap();
    assert_eq!(room.version, 1);
    assert_eq!(room.attributes, [("topic".into(), "rust".into())].into());
}
