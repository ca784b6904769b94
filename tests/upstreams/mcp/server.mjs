// Upstream for the hallpass upstream-reading suite (tests/upstreams/run_suite.py): the
// official MCP TypeScript SDK, StreamableHTTPServerTransport in stateless mode
// (sessionIdGenerator: undefined), one server + transport per request as in the SDK's
// stateless example. The transport reads the body itself (no parsedBody), decoding it by the
// content-type's charset (raw-body / iconv-lite) - SDK <= 1.24.x; 1.25 moved to a
// web-standard transport that always decodes UTF-8.
//
//   node server.mjs PORT        (or env PORT); appends one JSON line per tool run to the file
//                               in env RECORD_FILE.
import fs from 'node:fs';
import http from 'node:http';
import { z } from 'zod';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';

const port = Number(process.argv[2] || process.env.PORT);
const recordFile = process.env.RECORD_FILE;
if (!port || !recordFile) {
  console.error('usage: RECORD_FILE=... node server.mjs PORT');
  process.exit(2);
}

function makeServer(req) {
  const record = (tool, args) => {
    const line = JSON.stringify({
      case: req.headers['x-case'] || null,
      upstream: 'mcp',
      method: req.method,
      path: req.url,
      effect: { tool, arguments: args },
    });
    fs.appendFileSync(recordFile, line + '\n');
  };
  const server = new McpServer({ name: 'hallpass-suite-tools', version: '1.0.0' });
  server.registerTool(
    'search_docs',
    { description: 'Search the docs', inputSchema: { query: z.string().optional(), limit: z.number().optional() } },
    async (args) => {
      record('search_docs', args);
      return { content: [{ type: 'text', text: 'no results' }] };
    },
  );
  server.registerTool(
    'run_shell',
    { description: 'Run a shell command (never really: it only records)', inputSchema: { cmd: z.string().optional() } },
    async (args) => {
      record('run_shell', args);
      return { content: [{ type: 'text', text: 'ran' }] };
    },
  );
  return server;
}

const httpServer = http.createServer(async (req, res) => {
  if (req.method !== 'POST' || !req.url.startsWith('/mcp')) {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"error":"not found"}');
    return;
  }
  const server = makeServer(req);
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  try {
    await server.connect(transport);
    await transport.handleRequest(req, res);
  } catch (e) {
    if (!res.headersSent) {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: String(e) }));
    }
  }
});
httpServer.listen(port, '127.0.0.1', () => console.log(`mcp upstream on ${port}`));
