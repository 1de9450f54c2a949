// The transport for Node: gRPC over HTTP/2 (@connectrpc/connect-node).
//
//   new ChatClient({ targets: ["http://10.0.0.1:50051", "http://10.0.0.2:50051"], transport: grpcTransport, user })

import { createGrpcTransport } from "@connectrpc/connect-node";
import type { Transport } from "@connectrpc/connect";

/** gRPC over HTTP/2 to the node at `baseUrl` (`http://` plaintext, `https://` TLS). */
export function grpcTransport(baseUrl: string): Transport {
  return createGrpcTransport({ baseUrl });
}
