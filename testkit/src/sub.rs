//! `Sub`: one Subscribe stream driven by a test — frames out, events in, with the
//! answers to its requests matched by request id.

use chatroom::pb;
use tonic::Status;

use super::{Client, WAIT};

/// One Subscribe stream, driven by a test.
pub struct Sub {
    frames: Option<tokio::sync::mpsc::Sender<pb::SubscribeRequest>>,
    responses: tonic::Streaming<pb::SubscribeResponse>,
    stash: std::collections::VecDeque<pb::SubscribeResponse>,
    next_id: u64,
}

pub use pb::subscribe_response::Event as Ev;

impl Sub {
    /// A Sub over a stream the test opened itself.
    pub fn from_parts(
        frames: tokio::sync::mpsc::Sender<pb::SubscribeRequest>,
        responses: tonic::Streaming<pb::SubscribeResponse>,
    ) -> Sub {
        Sub {
            frames: Some(frames),
            responses,
            stash: Default::default(),
            next_id: 0,
        }
    }

    pub async fn open(client: &mut Client) -> Sub {
        let (frames, rx) = tokio::sync::mpsc::channel(1024);
        let opened = client.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx));
        let responses = tokio::time::timeout(WAIT, opened)
            .await
            .unwrap_or_else(|_| panic!("Subscribe did not answer within {WAIT:?}"))
            .expect("subscribe")
            .into_inner();
        Sub {
            frames: Some(frames),
            responses,
            stash: Default::default(),
            next_id: 0,
        }
    }

    /// Sends a frame; returns its request id.
    pub async fn request(&mut self, frame: pb::subscribe_request::Frame) -> String {
        self.try_request(frame).await.expect("stream open")
    }

    /// Sends a frame; `None` when the stream is closed.
    pub async fn try_request(&mut self, frame: pb::subscribe_request::Frame) -> Option<String> {
        self.next_id += 1;
        let request_id = format!("q{}", self.next_id);
        self.frames
            .as_ref()?
            .send(pb::SubscribeRequest {
                request_id: request_id.clone(),
                frame: Some(frame),
            })
            .await
            .ok()?;
        Some(request_id)
    }

    /// Sends a frame exactly as given.
    pub async fn frames_raw(&mut self, request: pb::SubscribeRequest) {
        let frames = self.frames.as_ref().expect("sending side open");
        frames.send(request).await.expect("stream open");
    }

    /// Closes the client's side of the stream (a half-close); events keep coming.
    pub fn close_sending(&mut self) {
        self.frames = None;
    }

    /// The next event, or `None` once the stream has ended (cleanly or not).
    pub async fn responses_message(&mut self) -> Option<Ev> {
        match tokio::time::timeout(WAIT, self.responses.message()).await {
            Ok(Ok(Some(r))) => r.event,
            Ok(Ok(None)) | Ok(Err(_)) => None,
            Err(_) => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The next frame from the server (stashed ones first).
    pub async fn next(&mut self) -> pb::SubscribeResponse {
        if let Some(r) = self.stash.pop_front() {
            return r;
        }
        self.read().await.expect("the stream ended")
    }

    /// The next frame or the stream's end, as the client library reports it.
    pub async fn responses_result(&mut self) -> Result<Option<pb::SubscribeResponse>, Status> {
        self.responses.message().await
    }

    /// The next frame straight from the wire; `None` when the stream ended cleanly.
    pub async fn read(&mut self) -> Option<pb::SubscribeResponse> {
        match tokio::time::timeout(WAIT, self.responses.message()).await {
            Ok(Ok(r)) => r,
            Ok(Err(status)) => panic!("stream failed: {status:?}"),
            Err(_) => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The stream's end: the status it ended with (UNAVAILABLE at shutdown).
    pub async fn end(&mut self) -> Status {
        loop {
            match tokio::time::timeout(WAIT, self.responses.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return Status::ok(""),
                Ok(Err(status)) => return status,
                Err(_) => panic!("the stream did not end within {WAIT:?}"),
            }
        }
    }

    /// The next event (the frame's payload).
    pub async fn event(&mut self) -> Ev {
        self.next().await.event.expect("an event")
    }

    /// The answer to `request_id`, keeping other frames for later.
    pub async fn reply(&mut self, request_id: &str) -> Ev {
        if let Some(i) = self.stash.iter().position(|r| r.request_id == request_id) {
            return self.stash.remove(i).unwrap().event.expect("an event");
        }
        loop {
            let r = self.read().await.expect("the stream ended");
            if r.request_id == request_id {
                return r.event.expect("an event");
            }
            self.stash.push_back(r);
        }
    }

    pub async fn attach(&mut self, room_id: &str, after_seq: Option<u64>) -> Ev {
        let id = self
            .request(pb::subscribe_request::Frame::Attach(pb::AttachRoom {
                room_id: room_id.into(),
                after_seq,
            }))
            .await;
        self.reply(&id).await
    }

    /// Attaches and asserts it worked.
    pub async fn attached(&mut self, room_id: &str, after_seq: Option<u64>) -> pb::Room {
        match self.attach(room_id, after_seq).await {
            Ev::Attached(a) => a.room.unwrap(),
            other => panic!("expected attached, got {other:?}"),
        }
    }

    pub async fn send(&mut self, request: pb::SendMessageRequest) -> Ev {
        let id = self
            .request(pb::subscribe_request::Frame::Send(request))
            .await;
        self.reply(&id).await
    }

    /// Pings and returns every frame that arrived before the pong.
    pub async fn until_pong(&mut self) -> Vec<Ev> {
        let id = self
            .request(pb::subscribe_request::Frame::Ping(pb::Ping {}))
            .await;
        let mut before = Vec::new();
        loop {
            let r = self.next().await;
            if r.request_id == id {
                assert!(matches!(r.event, Some(Ev::Pong(_))));
                return before;
            }
            before.push(r.event.expect("an event"));
        }
    }

    /// Reads until members leave an attached room; their user ids.
    pub async fn members_left(&mut self) -> Vec<String> {
        loop {
            if let Ev::MembersLeft(l) = self.event().await
                && !l.members.is_empty()
            {
                return l.members.into_iter().map(|m| m.user_id).collect();
            }
        }
    }

    /// Reads until a message with `seq` arrives; returns the seqs of every CHAT
    /// message read (in arrival order).
    pub async fn chat_seqs_until(&mut self, seq: u64) -> Vec<u64> {
        let mut seqs = Vec::new();
        loop {
            if let Ev::Message(m) = self.event().await
                && m.seq > 0
            {
                seqs.push(m.seq);
                if m.seq >= seq {
                    return seqs;
                }
            }
        }
    }
}
