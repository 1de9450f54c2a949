//! The gRPC layer: identity, decoding and validating requests, calling the room rules,
//! and encoding answers. It holds no rules of its own.
//!
//! The files: this one has the unary handlers ([`ChatRoomApi`]: decode, call the
//! rules, encode) and who the caller is; [`routes`] is the service as served (the
//! streaming calls to [`streams`], the rest to the generated server), under
//! [`metered`] (a span and metrics for every call); [`streams`] opens Subscribe and
//! Listen (a Subscribe call's frames decoded by `inbound`), [`session`] runs one,
//! [`watch_rooms`] serves WatchRooms, [`body`] writes a stream's frames, `gate` keeps
//! the body and the session from polling what nothing woke, `stop` is the server's
//! stop as the streams wait for it, [`work`] runs their database work; [`status`] maps
//! every error to its gRPC status; [`codec`] is the prost codec with small buffers.

pub mod body;
pub mod codec;
mod gate;
mod inbound;
pub mod metered;
pub mod routes;
pub mod session;
pub mod status;
mod stop;
pub mod streams;
pub mod watch_rooms;
pub mod work;

use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::Verifier;
use crate::domain::{Caller, PageRequest, RoomId, UserId};
use crate::error::Error;
use crate::proto::Frame;
use crate::proto::pb;
use crate::proto::{decode, encode};
use crate::rooms::Rooms;
use crate::rooms::streams::StreamSlot;
use server::chat_room_service_server::ChatRoomService;
pub use session::{SessionLimits, Sessions};
use status::stream_error;
use tonic::metadata::MetadataMap;

/// The generated server of every call but Subscribe and Listen (`build.rs`; those
/// are [`streams`]).
pub mod server {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/server/chatroom.v1.rs"));
}

/// The metadata key carrying the caller's user id with `--auth header`.
pub const USER_ID_HEADER: &str = "x-user-id";
/// The metadata key carrying `Bearer <JWT>` with `--auth jwt`.
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// The ChatRoomService implementation: the rules, who callers are, and what its
/// streams share (one `Sessions`, which holds the rules and the verifier too).
#[derive(Clone)]
pub struct ChatRoomApi {
    sessions: Sessions,
}

impl ChatRoomApi {
    /// `tokens`: with `--auth jwt`, callers are whom their bearer token says; `None`:
    /// whom `x-user-id` says.
    pub fn new(
        rooms: Rooms,
        limits: SessionLimits,
        tokens: Option<Verifier>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        ChatRoomApi {
            sessions: Sessions {
                rooms,
                limits,
                tokens: tokens.map(Arc::new),
                work: work::Pool::default(),
                server_stop: stop::Stop::following(stop.clone()),
                stop,
            },
        }
    }

    /// The caller with one of its stream slots (`TOO_MANY_STREAMS` when it has
    /// none left).
    fn stream_slot(&self, caller: Caller) -> Result<(Caller, StreamSlot), Error> {
        let slot = self.sessions.rooms.streams.open_stream(&caller)?;
        Ok((caller, slot))
    }

    /// A Subscribe session for `caller` over the client's frames; it holds `slot`
    /// until it ends.
    fn session(
        &self,
        caller: Caller,
        slot: StreamSlot,
        inbound: impl Stream<Item = Result<pb::SubscribeRequest, Status>> + Send + Unpin + 'static,
    ) -> impl Stream<Item = Result<Frame, Status>> + Send + 'static {
        session::run(&self.sessions, caller, slot, inbound)
    }

    /// A Listen call's session: its rooms become the attach frames a Subscribe client
    /// would send (request ids "0", "1", …), after which the client has nothing more
    /// to say, so the session ends once no room is left attached.
    fn listen_session(
        &self,
        caller: Caller,
        slot: StreamSlot,
        request: pb::ListenRequest,
    ) -> Result<impl Stream<Item = Result<Frame, Status>> + Send + 'static, Error> {
        if request.rooms.is_empty() {
            return Err(Error::invalid(
                "rooms",
                "name at least one room to listen to",
            ));
        }
        // Refused whole: each room past the limit would otherwise be one more
        // queued frame and one more error event, as many as the request can carry.
        self.sessions.limits.check_rooms(request.rooms.len())?;
        let frames = request.rooms.into_iter().enumerate().map(|(i, attach)| {
            Ok(pb::SubscribeRequest {
                request_id: i.to_string(),
                frame: Some(pb::subscribe_request::Frame::Attach(attach)),
            })
        });
        Ok(self.session(caller, slot, tokio_stream::iter(frames)))
    }

    /// The caller of a request: from its bearer token with `--auth jwt` (verified once
    /// per call, and once per Subscribe stream), else from its `x-user-id` metadata.
    /// The caller is recorded into the call's span.
    async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, Error> {
        let caller = match &self.sessions.tokens {
            Some(verifier) => verifier.verify(bearer_token(metadata)?).await,
            None => self.header_caller(metadata),
        }?;
        tracing::Span::current().record("user_id", caller.user_id.as_str());
        Ok(caller)
    }

    /// The caller `x-user-id` names (trusted as it is).
    fn header_caller(&self, metadata: &MetadataMap) -> Result<Caller, Error> {
        let value = metadata
            .get(USER_ID_HEADER)
            .ok_or_else(|| Error::Unauthenticated(format!("missing {USER_ID_HEADER} metadata")))?;
        let text = value
            .to_str()
            .map_err(|_| Error::Unauthenticated(format!("{USER_ID_HEADER} is not ASCII")))?;
        let user = UserId::parse(text)
            .map_err(|e| Error::Unauthenticated(format!("invalid {USER_ID_HEADER}: {e}")))?;
        Ok(self.sessions.rooms.caller(user))
    }
}

/// Records the room a call is about into its span (see [`metered`]).
fn in_room(room_id: &RoomId) {
    tracing::Span::current().record("room_id", room_id.as_str());
}

/// The token of an `authorization: Bearer <token>` entry.
fn bearer_token(metadata: &MetadataMap) -> Result<&str, Error> {
    let refused = |reason, description: &str| Error::TokenRefused {
        reason,
        description: description.to_string(),
    };
    let value = metadata.get(AUTHORIZATION_HEADER).ok_or_else(|| {
        refused(
            "TOKEN_MISSING",
            "missing authorization metadata (Bearer <token>)",
        )
    })?;
    let text = value
        .to_str()
        .map_err(|_| refused("TOKEN_MALFORMED", "authorization metadata is not ASCII"))?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(refused(
            "TOKEN_MALFORMED",
            "authorization metadata must be `Bearer <token>`",
        )),
    }
}

#[tonic::async_trait]
impl ChatRoomService for ChatRoomApi {
    async fn create_room(
        &self,
        request: Request<pb::CreateRoomRequest>,
    ) -> Result<Response<pb::CreateRoomResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let display_name = decode::display_name(req.display_name)?;
        let room = decode::new_room(req.room_id, req.name, req.attributes, req.settings)?;
        in_room(&room.id);
        let room = self
            .sessions
            .rooms
            .membership
            .create(&caller, room, display_name)
            .await?;
        Ok(Response::new(pb::CreateRoomResponse {
            room: Some(room.into()),
        }))
    }

    async fn join_room(
        &self,
        request: Request<pb::JoinRoomRequest>,
    ) -> Result<Response<pb::JoinRoomResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let room_id = decode::room_id("room_id", req.room_id)?;
        in_room(&room_id);
        let display_name = decode::display_name(req.display_name)?;
        let room = self
            .sessions
            .rooms
            .membership
            .join(&caller, &room_id, display_name)
            .await?;
        Ok(Response::new(pb::JoinRoomResponse {
            room: Some(room.into()),
        }))
    }

    async fn enter_room(
        &self,
        request: Request<pb::EnterRoomRequest>,
    ) -> Result<Response<pb::EnterRoomResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let display_name = decode::display_name(req.display_name)?;
        let room = decode::new_room(req.room_id, req.name, req.attributes, req.settings)?;
        in_room(&room.id);
        let (room, created) = self
            .sessions
            .rooms
            .membership
            .enter(&caller, room, display_name)
            .await?;
        Ok(Response::new(pb::EnterRoomResponse {
            room: Some(room.into()),
            created,
        }))
    }

    async fn leave_room(
        &self,
        request: Request<pb::LeaveRoomRequest>,
    ) -> Result<Response<pb::LeaveRoomResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let room_id = decode::room_id("room_id", request.into_inner().room_id)?;
        in_room(&room_id);
        self.sessions
            .rooms
            .membership
            .leave(&caller, &room_id)
            .await?;
        Ok(Response::new(pb::LeaveRoomResponse {}))
    }

    async fn switch_room(
        &self,
        request: Request<pb::SwitchRoomRequest>,
    ) -> Result<Response<pb::SwitchRoomResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let rooms = decode::room_move(req.from_room_id, req.to_room_id)?;
        in_room(rooms.to());
        let display_name = decode::display_name(req.display_name)?;
        let room = self
            .sessions
            .rooms
            .membership
            .switch(&caller, &rooms, display_name)
            .await?;
        Ok(Response::new(pb::SwitchRoomResponse {
            room: Some(room.into()),
        }))
    }

    async fn get_room(
        &self,
        request: Request<pb::GetRoomRequest>,
    ) -> Result<Response<pb::GetRoomResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let room_id = decode::room_id("room_id", request.into_inner().room_id)?;
        in_room(&room_id);
        let room = self.sessions.rooms.admin.get(&caller, &room_id).await?;
        Ok(Response::new(pb::GetRoomResponse {
            room: Some(room.into()),
        }))
    }

    async fn list_rooms(
        &self,
        request: Request<pb::ListRoomsRequest>,
    ) -> Result<Response<pb::ListRoomsResponse>, Status> {
        self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let filter = decode::room_filter(req.name, req.name_prefix)?;
        let page = PageRequest::new(req.page_size, decode::page_token(&req.page_token)?);
        let page = self.sessions.rooms.admin.list(&filter, page).await?;
        Ok(Response::new(pb::ListRoomsResponse {
            rooms: page.items.into_iter().map(Into::into).collect(),
            next_page_token: encode::page_token(page.next_after),
        }))
    }

    async fn list_my_rooms(
        &self,
        request: Request<pb::ListMyRoomsRequest>,
    ) -> Result<Response<pb::ListMyRoomsResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let page = PageRequest::new(req.page_size, decode::page_token(&req.page_token)?);
        let page = self.sessions.rooms.admin.mine(&caller, page).await?;
        Ok(Response::new(pb::ListMyRoomsResponse {
            rooms: page.items.into_iter().map(Into::into).collect(),
            next_page_token: encode::page_token(page.next_after),
        }))
    }

    async fn update_room(
        &self,
        request: Request<pb::UpdateRoomRequest>,
    ) -> Result<Response<pb::UpdateRoomResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let (room_id, patch) = decode::room_patch(request.into_inner())?;
        in_room(&room_id);
        let room = self
            .sessions
            .rooms
            .admin
            .update(&caller, &room_id, patch)
            .await?;
        Ok(Response::new(pb::UpdateRoomResponse {
            room: Some(room.into()),
        }))
    }

    async fn delete_room(
        &self,
        request: Request<pb::DeleteRoomRequest>,
    ) -> Result<Response<pb::DeleteRoomResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let room_id = decode::room_id("room_id", request.into_inner().room_id)?;
        in_room(&room_id);
        self.sessions.rooms.admin.delete(&caller, &room_id).await?;
        Ok(Response::new(pb::DeleteRoomResponse {}))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let room_id = decode::room_id("room_id", req.room_id)?;
        in_room(&room_id);
        let page = PageRequest::new(req.page_size, decode::page_token(&req.page_token)?);
        let page = self
            .sessions
            .rooms
            .admin
            .members(&caller, &room_id, req.online_only, page)
            .await?;
        Ok(Response::new(pb::ListMembersResponse {
            members: page.items.into_iter().map(Into::into).collect(),
            next_page_token: encode::page_token(page.next_after),
        }))
    }

    async fn set_member_role(
        &self,
        request: Request<pb::SetMemberRoleRequest>,
    ) -> Result<Response<pb::SetMemberRoleResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let (room_id, user_id, role) = decode::member_role(request.into_inner())?;
        in_room(&room_id);
        let member = self
            .sessions
            .rooms
            .moderation
            .set_role(&caller, &room_id, &user_id, role)
            .await?;
        Ok(Response::new(pb::SetMemberRoleResponse {
            member: Some(member.into()),
        }))
    }

    async fn transfer_ownership(
        &self,
        request: Request<pb::TransferOwnershipRequest>,
    ) -> Result<Response<pb::TransferOwnershipResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let (room_id, user_id) = decode::room_member(req.room_id, req.user_id)?;
        in_room(&room_id);
        let room = self
            .sessions
            .rooms
            .moderation
            .transfer_ownership(&caller, &room_id, &user_id)
            .await?;
        Ok(Response::new(pb::TransferOwnershipResponse {
            room: Some(room.into()),
        }))
    }

    async fn kick_member(
        &self,
        request: Request<pb::KickMemberRequest>,
    ) -> Result<Response<pb::KickMemberResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let (room_id, user_id) = decode::room_member(req.room_id, req.user_id)?;
        in_room(&room_id);
        let moderation = &self.sessions.rooms.moderation;
        let member = moderation.kick(&caller, &room_id, &user_id).await?;
        Ok(Response::new(pb::KickMemberResponse {
            member: Some(member.into()),
        }))
    }

    async fn ban_member(
        &self,
        request: Request<pb::BanMemberRequest>,
    ) -> Result<Response<pb::BanMemberResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let (room_id, user_id, length) = decode::sanction(req.room_id, req.user_id, req.duration)?;
        in_room(&room_id);
        let moderation = &self.sessions.rooms.moderation;
        let ban = moderation.ban(&caller, &room_id, &user_id, length).await?;
        Ok(Response::new(pb::BanMemberResponse {
            ban: Some(ban.into()),
        }))
    }

    async fn unban_member(
        &self,
        request: Request<pb::UnbanMemberRequest>,
    ) -> Result<Response<pb::UnbanMemberResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let (room_id, user_id) = decode::room_member(req.room_id, req.user_id)?;
        in_room(&room_id);
        let moderation = &self.sessions.rooms.moderation;
        moderation.unban(&caller, &room_id, &user_id).await?;
        Ok(Response::new(pb::UnbanMemberResponse {}))
    }

    async fn list_bans(
        &self,
        request: Request<pb::ListBansRequest>,
    ) -> Result<Response<pb::ListBansResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let room_id = decode::room_id("room_id", req.room_id)?;
        in_room(&room_id);
        let page = PageRequest::new(req.page_size, decode::page_token(&req.page_token)?);
        let moderation = &self.sessions.rooms.moderation;
        let page = moderation.bans(&caller, &room_id, page).await?;
        Ok(Response::new(pb::ListBansResponse {
            bans: page.items.into_iter().map(Into::into).collect(),
            next_page_token: encode::page_token(page.next_after),
        }))
    }

    async fn mute_member(
        &self,
        request: Request<pb::MuteMemberRequest>,
    ) -> Result<Response<pb::MuteMemberResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let (room_id, user_id, length) = decode::sanction(req.room_id, req.user_id, req.duration)?;
        in_room(&room_id);
        let moderation = &self.sessions.rooms.moderation;
        let mute = moderation.mute(&caller, &room_id, &user_id, length).await?;
        Ok(Response::new(pb::MuteMemberResponse {
            mute: Some(mute.into()),
        }))
    }

    async fn unmute_member(
        &self,
        request: Request<pb::UnmuteMemberRequest>,
    ) -> Result<Response<pb::UnmuteMemberResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let (room_id, user_id) = decode::room_member(req.room_id, req.user_id)?;
        in_room(&room_id);
        let moderation = &self.sessions.rooms.moderation;
        moderation.unmute(&caller, &room_id, &user_id).await?;
        Ok(Response::new(pb::UnmuteMemberResponse {}))
    }

    async fn list_mutes(
        &self,
        request: Request<pb::ListMutesRequest>,
    ) -> Result<Response<pb::ListMutesResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let room_id = decode::room_id("room_id", req.room_id)?;
        in_room(&room_id);
        let page = PageRequest::new(req.page_size, decode::page_token(&req.page_token)?);
        let moderation = &self.sessions.rooms.moderation;
        let page = moderation.mutes(&caller, &room_id, page).await?;
        Ok(Response::new(pb::ListMutesResponse {
            mutes: page.items.into_iter().map(Into::into).collect(),
            next_page_token: encode::page_token(page.next_after),
        }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let draft = decode::draft(request.into_inner(), self.sessions.rooms.message_limits())?;
        in_room(&draft.room_id);
        let message = self
            .sessions
            .rooms
            .messages
            .send(&caller, draft, None)
            .await?;
        Ok(Response::new(pb::SendMessageResponse {
            message: Some((&message).into()),
        }))
    }

    async fn recall_message(
        &self,
        request: Request<pb::RecallMessageRequest>,
    ) -> Result<Response<pb::RecallMessageResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let (room_id, seq) = decode::amended(req.room_id, req.seq)?;
        in_room(&room_id);
        let messages = &self.sessions.rooms.messages;
        let entry = messages.amend(&caller, &room_id, seq, None).await?;
        Ok(Response::new(pb::RecallMessageResponse {
            message: Some((&entry).into()),
        }))
    }

    async fn edit_message(
        &self,
        request: Request<pb::EditMessageRequest>,
    ) -> Result<Response<pb::EditMessageResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let limits = self.sessions.rooms.message_limits();
        let (room_id, seq, text, payload) = decode::edit(request.into_inner(), limits)?;
        in_room(&room_id);
        let messages = &self.sessions.rooms.messages;
        let entry = messages
            .amend(&caller, &room_id, seq, Some((text, payload)))
            .await?;
        Ok(Response::new(pb::EditMessageResponse {
            message: Some((&entry).into()),
        }))
    }

    async fn broadcast_message(
        &self,
        request: Request<pb::BroadcastMessageRequest>,
    ) -> Result<Response<pb::BroadcastMessageResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let limits = self.sessions.rooms.message_limits();
        let (rooms, draft) = decode::broadcast(request.into_inner(), limits)?;
        let messages = &self.sessions.rooms.messages;
        let sent = messages.broadcast(&caller, rooms, draft).await?;
        let results = sent
            .into_iter()
            .map(|(room_id, sent)| match sent {
                Ok(message) => pb::BroadcastResult {
                    room_id: room_id.to_string(),
                    message: Some((&message).into()),
                    error: None,
                },
                Err(error) => pb::BroadcastResult {
                    room_id: room_id.to_string(),
                    message: None,
                    error: Some(stream_error(&error)),
                },
            })
            .collect();
        Ok(Response::new(pb::BroadcastMessageResponse { results }))
    }

    type WatchRoomsStream = watch_rooms::Watch;

    async fn watch_rooms(
        &self,
        request: Request<pb::WatchRoomsRequest>,
    ) -> Result<Response<watch_rooms::Watch>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let after = request.into_inner().after_position;
        let (caller, slot) = self.stream_slot(caller)?;
        let watch = watch_rooms::open(&self.sessions, caller, slot, after).await?;
        Ok(Response::new(watch))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let caller = self.caller(request.metadata()).await?;
        let req = request.into_inner();
        let (range, limit) = decode::history(&req)?;
        let room_id = decode::room_id("room_id", req.room_id)?;
        in_room(&room_id);
        let (messages, has_more) = self
            .sessions
            .rooms
            .messages
            .messages(&caller, &room_id, range, limit)
            .await?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: messages.iter().map(Into::into).collect(),
            has_more,
        }))
    }
}
