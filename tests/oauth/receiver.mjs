// An https webhook receiver for hallpass's tests: every POST body is kept (JSON) and answered
// 204; GET /_test/events returns them. Listens on 127.0.0.1:$PORT (0: any) with $TLS_CERT and
// $TLS_KEY; prints one JSON line {"port": N, "issuer": "https://127.0.0.1:N"} once listening.
import https from 'node:https';
import fs from 'node:fs';

const env = process.env;
const events = [];
const server = https.createServer({ cert: fs.readFileSync(env.TLS_CERT), key: fs.readFileSync(env.TLS_KEY) }, (req, res) => {
  if (req.method === 'GET' && req.url === '/_test/events') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(events));
    return;
  }
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => {
    try {
      events.push({ path: req.url, user_agent: req.headers['user-agent'], body: JSON.parse(body) });
    } catch (e) {
      events.push({ path: req.url, unparsed: body });
    }
    res.statusCode = 204;
    res.end();
  });
});
await new Promise((resolve) => server.listen(Number(env.PORT || 0), '127.0.0.1', resolve));
const { port } = server.address();
console.log(JSON.stringify({ port, issuer: `https://127.0.0.1:${port}` }));
