// Upstream for the hallpass upstream-reading suite (tests/upstreams/run_suite.py):
// an Express 4 app written the way Express apps usually are: the default ("extended", qs)
// query parser, method-override for HTML forms / old clients, JSON and form body parsers,
// default (case-insensitive, non-strict) routing, loose equality in a handler.
//
//   node server.js PORT         (or env PORT); appends one JSON line per performed action
//                               to the file in env RECORD_FILE.
'use strict';

const fs = require('fs');
const express = require('express');
const methodOverride = require('method-override');

const port = Number(process.argv[2] || process.env.PORT);
const recordFile = process.env.RECORD_FILE;
if (!port || !recordFile) {
  console.error('usage: RECORD_FILE=... node server.js PORT');
  process.exit(2);
}

function record(req, effect) {
  const line = JSON.stringify({
    case: req.get('x-case') || null,
    upstream: 'express',
    method: req.method,
    original_method: req.originalMethod || req.method,
    path: req.path,
    effect,
  });
  fs.appendFileSync(recordFile, line + '\n');
}

const app = express();
app.use(express.json());
app.use(express.urlencoded({ extended: true }));
// The three usual method-override sources: header, query parameter, form field.
app.use(methodOverride('X-HTTP-Method-Override'));
app.use(methodOverride('_method'));
app.use(
  methodOverride((req) => {
    if (req.body && typeof req.body === 'object' && '_method' in req.body) {
      const m = req.body._method;
      delete req.body._method;
      return m;
    }
    return undefined;
  }),
);

const CONTACT = { id: '42', name: 'Ada', email: 'ada@example.com', ssn: '123-45-6789', salary: 100000 };

// ?fields=a,b | ?fields=a&fields=b | ?fields[]=a : the usual "sparse fieldset" handler.
app.get('/api/contacts/:id', (req, res) => {
  let fields = req.query.fields;
  if (fields === undefined) {
    fields = Object.keys(CONTACT);
  } else {
    fields = [].concat(fields).flatMap((f) => String(f).split(',')).map((f) => f.trim());
  }
  const out = {};
  for (const f of fields) if (f in CONTACT) out[f] = CONTACT[f];
  record(req, { fields: Object.keys(out) });
  res.json(out);
});

app.get('/api/items', (req, res) => {
  const limit = req.query.limit === undefined ? 10 : Number(req.query.limit);
  record(req, { limit });
  res.json({ limit, items: [] });
});

app.post('/api/items/:id', (req, res) => {
  record(req, { updated: req.params.id });
  res.json({ updated: req.params.id });
});

app.delete('/api/items/:id', (req, res) => {
  record(req, { deleted: req.params.id });
  res.json({ deleted: req.params.id });
});

app.get('/admin', (req, res) => {
  record(req, { admin: 'panel' });
  res.json({ admin: true });
});

app.get('/reports', (req, res) => {
  record(req, { reports: 'read' });
  res.json({ reports: [] });
});

app.get('/status', (req, res) => {
  record(req, { status: 'ok' });
  res.json({ ok: true });
});

app.post('/api/users', (req, res) => {
  // Loose equality, as found in real code: ["admin"] == "admin" is true.
  // eslint-disable-next-line eqeqeq
  const role = req.body.role == 'admin' ? 'admin' : 'user';
  record(req, { created_user_with_role: role });
  res.json({ role });
});

app.use((req, res) => res.status(404).json({ error: 'not found' }));

app.listen(port, '127.0.0.1', () => console.log(`express upstream on ${port}`));
