// A real OAuth 2.0 server for hallpass's credential custody tests: the npm `oidc-provider`
// (a certified OpenID Provider) on loopback, with
//   - client `crm-gateway` (client_credentials, scope crm.read), secret $CC_SECRET;
//   - client `mail-gateway` (refresh_token, rotated on every use), secret $RT_SECRET, and a
//     refresh token for account `alice` minted by the provider itself at start (as a login would)
//     and written to $RT_FILE.
// Token lifetimes: $TTL seconds (access tokens and client-credentials tokens).
// Listens on 127.0.0.1:$PORT (0: any), over https when $TLS_CERT/$TLS_KEY are given; prints one
// JSON line {"port": N, "issuer": "..."} once listening.
// Test hooks (not OAuth): GET /_test/stats → token requests counted at the server, by grant and
// result; POST /_test/delay?ms=N → each token response waits N ms first.
import http from 'node:http';
import https from 'node:https';
import fs from 'node:fs';
import Provider from 'oidc-provider';

const env = process.env;
const ttl = Number(env.TTL || 60);
const tls = env.TLS_CERT && env.TLS_KEY;
const server = tls
  ? https.createServer({ cert: fs.readFileSync(env.TLS_CERT), key: fs.readFileSync(env.TLS_KEY) })
  : http.createServer();

await new Promise((resolve) => server.listen(Number(env.PORT || 0), '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'crm-gateway',
      client_secret: env.CC_SECRET,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope: 'crm.read',
    },
    {
      client_id: 'mail-gateway',
      client_secret: env.RT_SECRET,
      grant_types: ['authorization_code', 'refresh_token'],
      redirect_uris: ['https://hallpass.example/cb'],
      response_types: ['code'],
      scope: 'openid offline_access mail.send',
    },
  ],
  scopes: ['openid', 'offline_access', 'crm.read', 'mail.send'],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    devInteractions: { enabled: false },
  },
  ttl: { AccessToken: ttl, ClientCredentials: ttl, RefreshToken: 86400, Grant: 86400 },
  rotateRefreshToken: true,
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
});
provider.proxy = false;

// A refresh token as a login would leave it: a grant for alice, then the token itself.
if (env.RT_FILE) {
  const client = await provider.Client.find('mail-gateway');
  const grant = new provider.Grant({ accountId: 'alice', clientId: 'mail-gateway' });
  grant.addOIDCScope('openid offline_access mail.send');
  const grantId = await grant.save();
  const rt = new provider.RefreshToken({
    accountId: 'alice',
    client,
    grantId,
    scope: 'openid offline_access mail.send',
    gty: 'authorization_code',
    authTime: Math.floor(Date.now() / 1000),
  });
  fs.writeFileSync(env.RT_FILE, `${await rt.save()}\n`);
}

const stats = { token_requests: 0, by_grant: {}, by_status: {} };
let delay = 0;
provider.on('server_error', (ctx, err) => console.error('server_error', err));
const grantOf = (ctx) => ctx.oidc?.params?.grant_type || 'none';
provider.on('grant.success', (ctx) => {
  const g = `${grantOf(ctx)}:ok`;
  stats.by_grant[g] = (stats.by_grant[g] || 0) + 1;
});
provider.on('grant.error', (ctx, err) => {
  const g = `${grantOf(ctx)}:${err.error || 'error'}`;
  stats.by_grant[g] = (stats.by_grant[g] || 0) + 1;
});

const callback = provider.callback();
server.on('request', (req, res) => {
  const url = new URL(req.url, issuer);
  if (url.pathname === '/_test/stats') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(stats));
    return;
  }
  if (url.pathname === '/_test/delay') {
    delay = Number(url.searchParams.get('ms') || 0);
    res.end('ok');
    return;
  }
  if (url.pathname === '/token' && req.method === 'POST') {
    stats.token_requests += 1;
    res.on('finish', () => {
      stats.by_status[res.statusCode] = (stats.by_status[res.statusCode] || 0) + 1;
    });
    if (delay > 0) {
      // The request body waits, unread, in the socket's buffers.
      setTimeout(() => callback(req, res), delay);
      return;
    }
  }
  callback(req, res);
});

console.log(JSON.stringify({ port, issuer }));
