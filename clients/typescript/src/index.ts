// chatroom-client: a client of the chatroom gRPC service that reconnects and resumes
// by itself, in Node (gRPC, @connectrpc/connect-node) and in browsers (gRPC-Web,
// @connectrpc/connect-web).
//
//   const client = new ChatClient({
//     targets: ["http://127.0.0.1:50051"],
//     transport: (baseUrl) => createGrpcTransport({ baseUrl }),
//     user: "alice",
//   });
//   await client.enterRoom("lobby");
//   const session = client.session();
//   await session.attach("lobby", 0n);
//   await client.send("lobby", "hello");
//   for await (const event of session) if (event.type === "message") console.log(event.message.text);

export { ChatClient, tokenExpiry, type ChatClientOptions, type SendOptions, type TokenProvider } from "./client.js";
export { Session, type SessionEvent, type SessionOptions } from "./session.js";
export { ChatroomError } from "./errors.js";
export { Backoff } from "./backoff.js";
export * from "./gen/chatroom/v1/chatroom_pb.js";
