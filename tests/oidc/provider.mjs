// A real OpenID provider for the unit suite (tests/support/oidc.py starts it on 127.0.0.1):
// oauth2-mock-server's issuer and service (discovery, /jwks, /token) behind a node:http server
// of our own, which adds what the tests need and the package lacks:
//   POST /test/rotate   a new signing key replaces the old one (the old kid is gone from /jwks)
//   GET  /test/stats    how many times /jwks was fetched (the refresh rate limit is measured here)
// Tokens come from the real token endpoint (client_credentials: scope and aud are the package's
// own parameters); `sub` is the client_id, as identity providers do for client credentials, and a
// `test_claims` object in the JSON request overrides claims (exp, nbf, iss) before signing.
// Usage: node provider.mjs ALG   (RS256, PS256, ES256 or EdDSA). Prints one JSON line
// {"issuer": ..., "kid": ...} once it listens; exits when stdin closes.
import http from 'node:http';
import { Events, OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

const alg = process.argv[2] ?? 'RS256';
let jwksRequests = 0;
let current;

async function build(url) {
  const issuer = new OAuth2Issuer();
  issuer.url = url;
  const key = await issuer.keys.generate(alg);
  const service = new OAuth2Service(issuer);
  service.on(Events.BeforeTokenSigning, (token, req) => {
    token.payload.sub = req.body.client_id;
    Object.assign(token.payload, req.body.test_claims ?? {});
  });
  return { issuer, service, kid: key.kid };
}

function sendJson(res, body) {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const server = http.createServer((req, res) => {
  const path = new URL(req.url ?? '/', 'http://127.0.0.1').pathname;
  if (req.method === 'POST' && path === '/test/rotate') {
    build(current.issuer.url).then((next) => {
      current = next;
      sendJson(res, { kid: next.kid });
    });
    return;
  }
  if (req.method === 'GET' && path === '/test/stats') {
    sendJson(res, { jwks_requests: jwksRequests });
    return;
  }
  if (path === '/jwks') jwksRequests += 1;
  current.service.requestHandler(req, res);
});

server.listen(0, '127.0.0.1', async () => {
  current = await build(`http://127.0.0.1:${server.address().port}`);
  process.stdout.write(`${JSON.stringify({ issuer: current.issuer.url, kid: current.kid })}\n`);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
