// Drives the hallpass approval console (src/console.html) in headless Chromium, as an operator
// would, against a running hallpass control listener. Run by the Rust console test:
//
//   node console.mjs --url http://127.0.0.1:PORT/ --token TOKEN --approval ap_xxx \
//        --expect-text SOMETEXT [--tool TOOL] [--screenshot PATH]
//
// Chromium comes from $CHROMIUM or /usr/bin/chromium. Prints one JSON line: {"ok":true,...} and
// exits 0, or {"ok":false,"step":...,"error":...} and exits 1 (2 for bad usage).

import { chromium } from 'playwright-core';
import { parseArgs } from 'node:util';

const OVERALL_MS = 60_000;
const STEP_MS = 15_000;
// The approval may be created just before or while the page loads; the page refreshes every 5 s.
const ROW_MS = 20_000;

function usage(message) {
  process.stderr.write(`console.mjs: ${message}\n` +
    'usage: node console.mjs --url URL --token TOKEN --approval ap_ID --expect-text TEXT [--tool TOOL] [--screenshot PATH]\n');
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      url: { type: 'string' },
      token: { type: 'string' },
      approval: { type: 'string' },
      'expect-text': { type: 'string' },
      tool: { type: 'string' },
      screenshot: { type: 'string' },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  usage(err.message);
}
for (const name of ['url', 'token', 'approval', 'expect-text']) {
  if (!args[name]) usage(`--${name} is required`);
}
const url = args.url;
const token = args.token;
const approvalId = args.approval;
const expectText = args['expect-text'];
const screenshot = args.screenshot;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const started = Date.now();
let step = 'start';
let browser = null;
let page = null;
let finished = false;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function describeProblems() {
  return problems.map((p) => `  [${p.phase}] ${p.kind}: ${p.text}${p.where ? ` (${p.where})` : ''}`).join('\n');
}

async function fail(message) {
  if (finished) return;
  finished = true;
  // Playwright's call logs carry terminal colours.
  message = String(message).replace(/\u001b\[[0-9;]*m/g, '');
  if (problems.length && !message.includes(describeProblems())) {
    message += `\nconsole errors / CSP violations seen so far:\n${describeProblems()}`;
  }
  process.stderr.write(`console test failed at step "${step}": ${message}\n`);
  if (page && screenshot) {
    const path = screenshot.replace(/(\.png)?$/i, '.failure.png');
    try {
      await page.screenshot({ path, fullPage: true, timeout: 5_000 });
      process.stderr.write(`failure screenshot: ${path}\n`);
    } catch { /* best effort */ }
  }
  emit({ ok: false, step, error: message, ms: Date.now() - started });
  try { if (browser) await browser.close(); } catch { /* ignore */ }
  process.exit(1);
}

const overall = setTimeout(() => {
  fail(`overall timeout of ${OVERALL_MS / 1000} s exceeded`);
}, OVERALL_MS);

// CSS attribute selector value: a double-quoted CSS string.
const attr = (value) => JSON.stringify(String(value));

// Console errors and CSP violations, with the phase they happened in. While the wrong token is
// tried, the browser logs the 401 responses as "Failed to load resource" errors: those are
// expected then and only then.
let phase = 'load';
const problems = [];
function problem(kind, textValue, where) {
  if (phase === 'bad-token' && kind === 'console' && /status of 401\b/.test(textValue)) return;
  problems.push({ phase, kind, text: textValue, where });
}

async function run() {
  step = 'launch chromium';
  browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'], timeout: STEP_MS });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__cspViolations.push(`${e.effectiveDirective || e.violatedDirective} blocked ${e.blockedURI || '(inline)'} at ${e.sourceFile || ''}:${e.lineNumber || 0}`);
    });
  });
  page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on('console', (msg) => {
    if (msg.type() === 'error') {
      const loc = msg.location();
      problem('console', msg.text(), loc && loc.url ? `${loc.url}:${loc.lineNumber}` : '');
    }
  });
  page.on('pageerror', (err) => problem('pageerror', String(err && err.stack ? err.stack : err), ''));
  page.on('dialog', (dialog) => {
    problem('dialog', `unexpected ${dialog.type()} dialog: ${dialog.message()}`, '');
    dialog.dismiss().catch(() => {});
  });

  step = 'open the console';
  const response = await page.goto(url, { waitUntil: 'load' });
  if (!response) throw new Error(`no response for ${url}`);
  if (response.status() !== 200) throw new Error(`GET ${url} answered ${response.status()}, want 200`);
  const headers = response.headers();
  const ctype = headers['content-type'] || '';
  if (!/^text\/html\b/i.test(ctype)) throw new Error(`content-type is ${JSON.stringify(ctype)}, want text/html`);
  const csp = headers['content-security-policy'] || '';
  if (!/script-src 'sha256-[A-Za-z0-9+/=]+'/.test(csp) || !/default-src 'none'/.test(csp)) {
    throw new Error(`missing or weak content-security-policy: ${JSON.stringify(csp)}`);
  }
  // A script blocked by the CSP (wrong hash) or failing to start shows up here, before any click.
  const early = await page.evaluate(() => window.__cspViolations || []);
  for (const v of early) problems.push({ phase, kind: 'csp', text: v, where: '' });
  if (problems.length) throw new Error(`the page did not load cleanly:\n${describeProblems()}`);
  const title = await page.title();
  if (title !== 'hallpass — approvals') throw new Error(`title is ${JSON.stringify(title)}`);

  step = 'see the login form';
  await page.locator('#token').waitFor({ state: 'visible' });
  await page.locator('#login').waitFor({ state: 'visible' });
  if ((await page.locator('#token').getAttribute('type')) !== 'password') throw new Error('#token is not a password input');

  step = 'log in with a wrong token';
  phase = 'bad-token';
  await page.locator('#token').fill('wrong-token');
  await page.locator('#login').click();
  await page.locator('#error').waitFor({ state: 'visible' });
  const badError = (await page.locator('#error').innerText()).trim();
  if (!/401|token/i.test(badError)) throw new Error(`the error shown for a wrong token does not mention 401 or the token: ${JSON.stringify(badError)}`);
  if (!(await page.locator('#token').isVisible())) throw new Error('the login form went away after a wrong token');
  if (await page.locator(`[data-approval-id]`).count() !== 0) throw new Error('approvals are shown after a wrong token');
  const storedBad = await page.evaluate(() => Object.keys(sessionStorage).map((k) => sessionStorage.getItem(k)));
  if (storedBad.includes('wrong-token')) throw new Error('a rejected token was kept in sessionStorage');

  step = 'log in with the token';
  phase = 'main';
  await page.locator('#token').fill(token);
  await page.locator('#login').click();
  const row = page.locator(`[data-approval-id=${attr(approvalId)}]`);
  await row.waitFor({ state: 'visible', timeout: ROW_MS });
  if (await page.locator('#error').isVisible()) {
    throw new Error(`an error is still shown after logging in: ${JSON.stringify(await page.locator('#error').innerText())}`);
  }
  if (await page.locator('#token').isVisible()) throw new Error('the login form is still shown after logging in');

  step = 'check the pending approval row';
  let rowText = '';
  const deadline = Date.now() + 6_000;
  for (;;) {
    rowText = await row.innerText();
    if (rowText.includes(expectText)) break;
    if (Date.now() > deadline) throw new Error(`row ${approvalId} does not show ${JSON.stringify(expectText)}; it shows: ${JSON.stringify(rowText)}`);
    await page.waitForTimeout(250);
  }
  const toolEl = row.locator('.tool');
  if ((await toolEl.count()) !== 1) throw new Error(`row ${approvalId} shows no MCP tool name; it shows: ${JSON.stringify(rowText)}`);
  const tool = (await toolEl.innerText()).trim();
  if (!tool || tool === '—') throw new Error(`row ${approvalId} has an empty tool name`);
  if (args.tool !== undefined && tool !== args.tool) throw new Error(`row ${approvalId} shows tool ${JSON.stringify(tool)}, want ${JSON.stringify(args.tool)}`);
  if (!rowText.includes(tool)) throw new Error(`row ${approvalId} text lacks the tool name ${JSON.stringify(tool)}`);
  for (const hook of ['ttl', 'uses', 'reason']) {
    if ((await row.locator(`[data-field="${hook}"]`).count()) !== 1) throw new Error(`row ${approvalId} has no [data-field="${hook}"] input`);
  }
  for (const hook of ['approve', 'deny']) {
    if ((await row.locator(`[data-action="${hook}"]`).count()) !== 1) throw new Error(`row ${approvalId} has no [data-action="${hook}"] button`);
  }
  const ttlDefault = await row.locator('[data-field="ttl"]').inputValue();
  if (ttlDefault !== '') throw new Error(`the TTL field defaults to ${JSON.stringify(ttlDefault)}, want it empty (the server's grant_ttl)`);

  if (screenshot) {
    step = 'take the screenshot';
    await page.screenshot({ path: screenshot, fullPage: true });
  }

  step = 'approve';
  await row.locator('[data-field="ttl"]').fill('15m');
  await row.locator('[data-field="reason"]').fill('looks fine');
  await row.locator('[data-action="approve"]').click();

  step = 'see the grant';
  const grant = page.locator(`[data-grant-id][data-approval=${attr(approvalId)}]`);
  await grant.waitFor({ state: 'visible' });
  await row.waitFor({ state: 'detached' });
  if (await page.locator('#error').isVisible()) {
    throw new Error(`an error is shown after approving: ${JSON.stringify(await page.locator('#error').innerText())}`);
  }
  const grantId = await grant.getAttribute('data-grant-id');
  const grantText = await grant.innerText();
  if (!grantText.includes('looks fine')) throw new Error(`grant ${grantId} does not show the reason "looks fine": ${JSON.stringify(grantText)}`);
  if ((await grant.locator('[data-action="revoke"]').count()) !== 1) throw new Error(`grant ${grantId} has no revoke button`);

  step = 'check the grant through the API';
  const seen = await page.evaluate(async ([tok, id]) => {
    const res = await fetch('v1/grants', { headers: { authorization: 'Bearer ' + tok }, cache: 'no-store' });
    const body = await res.json();
    return (body.grants || []).find((g) => g.id === id) || null;
  }, [token, grantId]);
  if (!seen) throw new Error(`GET /v1/grants has no grant ${grantId}`);
  if (seen.approval !== approvalId) throw new Error(`grant ${grantId} is for ${JSON.stringify(seen.approval)}, want ${approvalId}`);
  const ttlSeconds = Math.round((Date.parse(seen.expires_at) - Date.parse(seen.created_at)) / 1000);
  if (!(ttlSeconds >= 840 && ttlSeconds <= 960)) {
    throw new Error(`grant ${grantId} lasts ${ttlSeconds} s (created_at ${seen.created_at}, expires_at ${seen.expires_at}), want about 900 s from the TTL field "15m"`);
  }

  step = 'check where the token is kept';
  const storage = await page.evaluate((tok) => ({
    session: Object.keys(sessionStorage).some((k) => sessionStorage.getItem(k) === tok),
    local: Object.keys(localStorage).some((k) => (localStorage.getItem(k) || '').includes(tok)),
    cookie: document.cookie.includes(tok),
  }), token);
  if (!storage.session) throw new Error('the token is not in sessionStorage');
  if (storage.local || storage.cookie) throw new Error('the token leaked into localStorage or a cookie');

  step = 'log out';
  await page.locator('#logout').click();
  await page.locator('#token').waitFor({ state: 'visible' });
  const after = await page.evaluate((tok) => Object.keys(sessionStorage).some((k) => sessionStorage.getItem(k) === tok), token);
  if (after) throw new Error('the token is still in sessionStorage after logging out');
  if (await page.locator('[data-grant-id]').count() !== 0) throw new Error('grants are still shown after logging out');

  step = 'check console errors and CSP violations';
  const csps = await page.evaluate(() => window.__cspViolations || []);
  for (const v of csps) problems.push({ phase, kind: 'csp', text: v, where: '' });
  if (problems.length) {
    throw new Error(`${problems.length} console error(s) / CSP violation(s):\n${describeProblems()}`);
  }

  await browser.close();
  browser = null;
  return { approval: approvalId, grant: grantId, tool, ttl_seconds: ttlSeconds, screenshot: screenshot || null };
}

run().then((result) => {
  if (finished) return;
  finished = true;
  clearTimeout(overall);
  emit({ ok: true, ...result, ms: Date.now() - started });
  process.exit(0);
}, (err) => fail(err && err.message ? err.message : String(err)));
