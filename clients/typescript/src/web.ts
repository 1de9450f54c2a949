// The transport for browsers: gRPC-Web over fetch (@connectrpc/connect-web).
//
//   new ChatClient({ targets: ["https://chat.example.com"], transport: grpcWebTransport, token })

import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { Transport } from "@connectrpc/connect";

/** gRPC-Web to the node at `baseUrl` (the server must list the page's origin in
 * --cors-origins). */
export function grpcWebTransport(baseUrl: string): Transport {
  return createGrpcWebTransport({ baseUrl });
}
