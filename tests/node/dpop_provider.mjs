// A DPoP authorization server for tests/test_dpop.py: node oidc-provider with
// client credentials, DPoP (RFC 9449, with a nonce secret) and resource
// indicators, so the access tokens are JWTs with `cnf.jkt` that a resource
// server can check on its own.
//
//   node dpop_provider.mjs PORT RESOURCE CLIENT_SECRET
//
// Prints one JSON line when listening. Beside the provider, on the same port:
//   GET  /_stats            {"token_requests": n, "nonce_challenges": m}
//   POST /_config?nonce=1   require a DPoP nonce at the token endpoint (0: don't)
//   POST /_config?dpop=0    ignore DPoP altogether (tokens come back as Bearer)
import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const [port, resource, secret] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const state = { requireNonce: false, tokenRequests: 0, nonceChallenges: 0 };

const signing = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'proxy',
    client_secret: secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'ES256',
  }],
  jwks: { keys: [{ ...signing, alg: 'ES256', use: 'sig', kid: 'as-1' }] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    dPoP: {
      enabled: true,
      nonceSecret: crypto.randomBytes(32),
      requireNonce: () => state.requireNonce,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience: resource,
        accessTokenFormat: 'jwt',
        accessTokenTTL: 3600,
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const app = provider.callback();
let ignoreDpop = false;

http.createServer((req, res) => {
  const url = new URL(req.url, issuer);
  if (url.pathname === '/_stats') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ token_requests: state.tokenRequests, nonce_challenges: state.nonceChallenges }));
    return;
  }
  if (url.pathname === '/_config') {
    if (url.searchParams.has('nonce')) state.requireNonce = url.searchParams.get('nonce') === '1';
    if (url.searchParams.has('dpop')) ignoreDpop = url.searchParams.get('dpop') === '0';
    res.end('ok');
    return;
  }
  if (url.pathname === '/token') {
    state.tokenRequests += 1;
    if (ignoreDpop) delete req.headers.dpop;
    res.on('finish', () => {
      if (res.statusCode === 400 && res.getHeader('dpop-nonce')) state.nonceChallenges += 1;
    });
  }
  app(req, res);
}).listen(Number(port), '127.0.0.1', () => {
  console.log(JSON.stringify({ issuer, token_url: `${issuer}/token`, jwks_uri: `${issuer}/jwks` }));
});
