// Node's clients as a user sets them up: `node clients.mjs MODE URL`.
//
// fetch, sse, undici-ws: undici's EnvHttpProxyAgent as the global dispatcher
//   (Node 20 reads no proxy variable itself), then fetch or undici's WebSocket.
// ws: the `ws` package with an `https-proxy-agent` for HTTPS_PROXY (`ws` reads
//   no variable; the agent opens a CONNECT tunnel for ws:// and wss:// alike).
// The proxy's CA comes from NODE_EXTRA_CA_CERTS, which Node reads at start.
//
// Output (tests/test_clients.py reads it): `status N` then the body; each
// non-empty event-stream line as it arrives; or the echo of `hello`, then
// `closed CODE REASON SECONDS` once the connection has ended after the
// server's close (SECONDS from sending `close`).
import { EnvHttpProxyAgent, WebSocket as UndiciWebSocket, setGlobalDispatcher } from "undici";
import { HttpsProxyAgent } from "https-proxy-agent";
import WebSocket from "ws";

const TIMEOUT_MS = 15_000;
const CLOSE_TIMEOUT_MS = 30_000; // the test kills this call after 15 s: a close must come as an event, not by a timer
const [mode, url] = process.argv.slice(2);

function fail(err) {
  console.error(`${mode} failed: ${err?.message ?? err}${err?.cause ? `: ${err.cause.message ?? err.cause}` : ""}`);
  process.exit(1);
}

async function get() {
  const response = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
  process.stdout.write(`status ${response.status}\n${await response.text()}\n`);
}

async function sse() {
  const response = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of response.body) {
    pending += decoder.decode(chunk, { stream: true });
    const lines = pending.split("\n");
    pending = lines.pop();
    for (const line of lines) if (line.trim()) process.stdout.write(`${line.trim()}\n`);
  }
}

// The WHATWG WebSocket: `close` fires once the connection has ended.
function undiciWs() {
  return new Promise((resolve, reject) => {
    const ws = new UndiciWebSocket(url);
    let start;
    ws.onopen = () => ws.send("hello");
    ws.onmessage = (event) => {
      process.stdout.write(`${event.data}\n`);
      start = performance.now();
      ws.send("close");
    };
    ws.onerror = (event) => reject(event.error ?? new Error("WebSocket error"));
    ws.onclose = (event) => {
      const seconds = ((performance.now() - start) / 1000).toFixed(2);
      process.stdout.write(`closed ${event.code} ${event.reason} ${seconds} clean=${event.wasClean}\n`);
      resolve();
    };
  });
}

// `ws`: its `close` event fires once the socket has ended (or after its closeTimeout).
function wsLib() {
  return new Promise((resolve, reject) => {
    const agent = new HttpsProxyAgent(process.env.HTTPS_PROXY);
    const ws = new WebSocket(url, { agent, handshakeTimeout: TIMEOUT_MS, closeTimeout: CLOSE_TIMEOUT_MS });
    let start;
    ws.on("open", () => ws.send("hello"));
    ws.on("message", (data) => {
      process.stdout.write(`${data}\n`);
      start = performance.now();
      ws.send("close");
    });
    ws.on("error", reject);
    ws.on("close", (code, reason) => {
      const seconds = ((performance.now() - start) / 1000).toFixed(2);
      process.stdout.write(`closed ${code} ${reason} ${seconds}\n`);
      resolve();
    });
  });
}

const modes = { get, sse, "undici-ws": undiciWs, ws: wsLib };
if (!modes[mode] || !url) {
  console.error("usage: node clients.mjs get|sse|undici-ws|ws URL");
  process.exit(2);
}
setGlobalDispatcher(new EnvHttpProxyAgent());
try {
  await modes[mode]();
} catch (err) {
  fail(err);
}
