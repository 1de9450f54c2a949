// Serves the page (index.html and the bundled dist/app.js) on 127.0.0.1.
//
//     npm run build && node serve.mjs 8080
//     chatroom --cors-origins http://127.0.0.1:8080
//     open http://127.0.0.1:8080/?server=http://127.0.0.1:50051
//
// The page's origin must be in the server's --cors-origins: the browser asks the
// chatroom server (another origin) whether this page may call it.

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const FILES = {
  "/": ["index.html", "text/html; charset=utf-8"],
  "/dist/app.js": ["dist/app.js", "text/javascript; charset=utf-8"],
};

/** Starts serving on `port` (0: any free one); resolves to the server. */
export function serve(port) {
  const server = createServer(async (request, response) => {
    const file = FILES[new URL(request.url, "http://x").pathname];
    if (!file) {
      response.writeHead(404).end("not found");
      return;
    }
    const body = await readFile(path.join(here, file[0]));
    response.writeHead(200, { "content-type": file[1] }).end(body);
  });
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const server = await serve(Number(process.argv[2] ?? 8080));
  console.log(`serving the page on http://127.0.0.1:${server.address().port}/`);
}
