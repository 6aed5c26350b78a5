// Opens a WebSocket with undici (optionally through an HTTP proxy), sends
// "hello", and once the echo is back asks for the connection to close:
//   node websocket_close.mjs URL server|client [PROXY_URL [absolute]]
// "server": sends "close" (the server then closes with 4001 "server bye");
// "client": closes with 4000 "client bye".
// Prints one JSON line per event: {"event": "message", ...}, then
// {"event": "close", code, reason, wasClean, ms}, where ms is the time from
// the request to close until undici's close event, which undici fires only
// when the connection has ended (undici has no close timeout of its own: a
// close that is never passed on waits for the proxy's idle timeout).
// The proxy's CA comes from NODE_EXTRA_CA_CERTS, which Node reads at start.
import { ProxyAgent, WebSocket } from "undici";

const [url, who, proxy, form] = process.argv.slice(2);
if (!url || !["server", "client"].includes(who)) {
  console.error("usage: node websocket_close.mjs URL server|client [PROXY_URL]");
  process.exit(2);
}

const out = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);
// Longer than any timeout the test sets, so that only the connection's end ends this.
const guard = setTimeout(() => {
  out({ event: "gave-up" });
  process.exit(1);
}, 90_000);

// "absolute": a ws:// request goes to the proxy in absolute form, not in a CONNECT tunnel.
const agent = proxy ? new ProxyAgent({ uri: proxy, proxyTunnel: form !== "absolute" }) : undefined;
const ws = new WebSocket(url, agent ? { dispatcher: agent } : undefined);
let asked = null;

ws.addEventListener("open", () => ws.send("hello"));
ws.addEventListener("message", (e) => {
  out({ event: "message", data: String(e.data) });
  asked = performance.now();
  if (who === "server") {
    ws.send("close");
  } else {
    ws.close(4000, "client bye");
  }
});
ws.addEventListener("error", (e) => out({ event: "error", message: String(e.message ?? e.error) }));
ws.addEventListener("close", (e) => {
  const ms = asked === null ? null : Math.round(performance.now() - asked);
  out({ event: "close", code: e.code, reason: e.reason, wasClean: e.wasClean, ms });
  clearTimeout(guard);
  process.exit(0);
});
