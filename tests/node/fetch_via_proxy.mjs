// Fetches the URL given on the command line through HTTPS_PROXY / HTTP_PROXY,
// honouring NO_PROXY, and prints the status on the first line, then the body.
//
// Node 20's global fetch does not read the proxy variables itself (newer Node
// does, with NODE_USE_ENV_PROXY=1): undici's EnvHttpProxyAgent does, installed
// as the global dispatcher. The proxy's CA comes from NODE_EXTRA_CA_CERTS,
// which Node reads at start.
import { EnvHttpProxyAgent, setGlobalDispatcher } from "undici";

const url = process.argv[2];
if (!url) {
  console.error("usage: node fetch_via_proxy.mjs URL");
  process.exit(2);
}

setGlobalDispatcher(new EnvHttpProxyAgent());

try {
  const response = await fetch(url, { signal: AbortSignal.timeout(60_000) });
  const body = await response.text();
  process.stdout.write(`${response.status}\n${body}`);
} catch (err) {
  // The cause (e.g. a certificate error or a refused CONNECT) is what helps.
  console.error(`fetch failed: ${err.message}${err.cause ? `: ${err.cause.message ?? err.cause}` : ""}`);
  process.exit(1);
}
