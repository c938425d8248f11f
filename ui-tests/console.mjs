// The browser half of `make test-ui` (cmd/tollgate/ui_test.go starts the
// servers, seeds them and runs this): playwright-core drives Debian's
// chromium through the console as an operator would, checking each page
// against the admin API and the proxy. Every step prints one JSON line,
// {"step", "status": pass|fail|skip, "detail"}, which the Go test turns
// into a subtest. Element ids are those of docs/ui/README.md.

import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const env = process.env;
const need = (k) => {
  if (!env[k]) throw new Error(`${k} is not set (cmd/tollgate/ui_test.go sets it)`);
  return env[k];
};
const ADMIN = need('UI_ADMIN');
const PROXY = need('UI_PROXY');
const ADMIN_TOKEN = need('UI_ADMIN_TOKEN');
const SHOTS = need('UI_SHOTS');
const PROJECT = need('UI_PROJECT');
const USER = need('UI_USER');
const PROJECT_TOKEN = need('UI_PROJECT_TOKEN');
// SEEDED is how many requests the Go side sent with project PROJECT.
const SEEDED = Number(need('UI_PROJECT_REQUESTS'));
// DAYS is how many UTC days, today included, have seeded usage.
const DAYS = Number(need('UI_DAYS'));
// The rate-limit and model-rule steps each have a token of their own, in
// a workspace and a project no other step uses, so what one leaves behind
// (a limiter's state, a rule) cannot reach another.
const LIMIT_WORKSPACE = need('UI_LIMIT_WORKSPACE');
const LIMIT_TOKEN = need('UI_LIMIT_TOKEN');
const RULE_PROJECT = need('UI_RULE_PROJECT');
const RULE_TOKEN = need('UI_RULE_TOKEN');
const { chromium } = await import(pathToFileURL(join(need('UI_MODULES'), 'playwright-core', 'index.mjs')).href);

const DIALECT = 'anthropic-messages';
const HARNESS = 'claude-code';
const BINDING = `binding-project-${PROJECT}-${DIALECT}-any`;
const CONN = `conn-${HARNESS}-${DIALECT}`;

function report(step, status, detail = '') {
  console.log(JSON.stringify({ step, status, detail }));
}

// step runs fn and reports it; a failed step does not stop the others,
// which start from their own page.
async function step(name, fn) {
  const t0 = Date.now();
  try {
    const detail = await fn();
    report(name, 'pass', `${detail ?? ''} (${Date.now() - t0} ms)`.trim());
  } catch (e) {
    report(name, 'fail', e.stack || String(e));
  }
}

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

// api calls the admin API with the admin token.
async function api(path) {
  const r = await fetch(`${ADMIN}/admin/v1${path}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  const body = await r.text();
  check(r.ok, `GET /admin/v1${path}: ${r.status} ${body}`);
  return JSON.parse(body);
}

// infer sends one request through the proxy with tok and returns its
// status, headers and body.
async function infer(tok, model = 'claude-sonnet-4-5') {
  const r = await fetch(`${PROXY}/anthropic/v1/messages`, {
    method: 'POST',
    headers: { 'x-api-key': tok, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
    body: JSON.stringify({ model, max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] }),
  });
  return { status: r.status, headers: r.headers, body: await r.text() };
}

// anthropicError is the Anthropic Messages error envelope of an answer,
// {"type":"error","error":{"type","message"}}, or throws.
function anthropicError(r) {
  let j;
  try {
    j = JSON.parse(r.body);
  } catch {
    throw new Error(`${r.status}: not JSON: ${r.body}`);
  }
  check(j.type === 'error' && j.error && typeof j.error.type === 'string' && typeof j.error.message === 'string',
    `${r.status}: not the Anthropic error envelope: ${r.body}`);
  return j.error;
}

// halted says whether an answer is the proxy's refusal for a halted
// project (not, say, a budget's 403).
const halted = (r) => r.status === 403 && /disabled this provider/.test(r.body);

// eventually retries fn until it returns true, for at most ms: a write on
// the page reaches the proxy through the resolver's cache.
async function eventually(what, fn, ms = 10000) {
  const until = Date.now() + ms;
  let last;
  for (;;) {
    last = await fn();
    if (last === true) return;
    if (Date.now() > until) throw new Error(`${what}: still not so after ${ms} ms (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// The machine's network is closed: Chromium's own background traffic would
// only be refused, many connections at a time.
const browser = await chromium.launch({
  executablePath: env.UI_CHROMIUM || '/usr/bin/chromium',
  args: ['--disable-gpu', '--disable-quic', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1, locale: 'en-GB', timezoneId: 'UTC' });
context.setDefaultTimeout(10000);
const page = await context.newPage();
const ui = (p) => `${ADMIN}/ui/${p}`;

// shot photographs the viewport, scrolled first so that the element
// scrollTo names, if any, is at its top.
async function shot(name, scrollTo) {
  if (scrollTo) await page.locator(scrollTo).evaluate((el) => el.scrollIntoView({ block: 'start' }));
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

// open loads a console page; anything but a 200 fails the step. Every
// page is built, so none may be skipped.
async function open(path) {
  const resp = await page.goto(ui(path));
  check(resp.status() === 200, `GET /ui/${path}: ${resp.status()}`);
  return resp;
}

async function text(sel) {
  return (await page.locator(sel).innerText()).trim();
}

// The writes made on the pages, for the audit step to find.
const writes = [];

await step('signin', async () => {
  await page.goto(ui(''));
  check(new URL(page.url()).pathname === '/ui/signin', `an anonymous /ui/ went to ${page.url()}, not the sign-in page`);
  await shot('signin');
  await page.fill('#signin-token', ADMIN_TOKEN);
  await Promise.all([page.waitForURL(/\/ui\/connections/), page.click('#signin-submit')]);
  const ck = (await context.cookies()).find((c) => c.name === 'tollgate_console');
  check(ck, 'no session cookie after signing in');
  check(ck.httpOnly && ck.sameSite === 'Strict' && ck.path === '/ui/', `session cookie ${JSON.stringify({ ...ck, value: '…' })}`);
  check((await page.locator('#nav-connections').getAttribute('aria-current')) === 'page', 'nav-connections is not the current page');
  return 'signed in; cookie HttpOnly, SameSite=Strict, path /ui/';
});

await step('connections', async () => {
  await page.goto(ui(`connections?project=${PROJECT}&user=${USER}`));
  const row = page.locator(`#${CONN}`);
  check((await row.getAttribute('data-source')) === 'project', `${CONN} data-source=${await row.getAttribute('data-source')}, want project`);
  const badge = await text(`#${CONN}-badge`);
  check(badge === 'Project override', `${CONN} badge "${badge}", want "Project override"`);
  await shot('connections');
  await page.click('#connect-new');
  await page.locator('#connect-form').waitFor();
  await shot('connect');
  return `${CONN}: ${badge}`;
});

await step('usage-totals', async () => {
  // The seeded days and one project: the other project's requests must
  // stay out of both answers.
  const day = (ago) => new Date(Date.now() - ago * 86400e3).toISOString().slice(0, 10);
  const q = `from=${day(DAYS - 1)}&to=${day(0)}&project=${encodeURIComponent(PROJECT)}`;
  await open(`usage?${q}`);
  const num = async (sel, attr) => {
    const v = await page.locator(sel).getAttribute(attr);
    check(v !== null && v !== '', `${sel} has no ${attr}`);
    return Number(v);
  };
  const shown = {
    requests: await num('#usage-total-requests', 'data-value'),
    cost_micro_usd: await num('#usage-total-cost', 'data-micro-usd'),
    input_total: await num('#usage-total-input-tokens', 'data-value'),
    output: await num('#usage-total-output-tokens', 'data-value'),
    unpriced_requests: await num('#usage-total-unpriced', 'data-value'),
  };
  // The charts' own totals: the total cell of each chart table's footer,
  // and the sum of the cost chart's stacked series.
  const chartCost = await num('#usage-chart-table tfoot td[data-total="true"]', 'data-micro-usd');
  const chartTokens = await num('#usage-tokens-table tfoot td[data-total="true"]', 'data-tokens');
  const stacked = await page.locator('#usage-chart-table tfoot td[data-series]').evaluateAll((tds) =>
    tds.reduce((sum, td) => sum + Number(td.dataset.microUsd || 0), 0));
  check(stacked === chartCost, `the cost chart's series add up to ${stacked} µ$, its total says ${chartCost}`);

  const want = { requests: 0, cost_micro_usd: 0, input_total: 0, output: 0, unpriced_requests: 0 };
  for (const r of await api(`/usage?${q}&group_by=model`)) {
    for (const k of Object.keys(want)) want[k] += r[k] ?? 0;
  }
  check(want.requests === SEEDED, `the usage API counts ${want.requests} requests for project ${PROJECT}, ${SEEDED} were sent`);
  for (const k of Object.keys(want)) {
    check(shown[k] === want[k], `page total ${k} = ${shown[k]}, API ${want[k]}`);
  }
  check(chartCost === want.cost_micro_usd, `cost chart total ${chartCost} µ$, API ${want.cost_micro_usd}`);
  check(chartTokens === want.input_total + want.output, `tokens chart total ${chartTokens}, API ${want.input_total} in + ${want.output} out`);
  // A model the price table lacks is unpriced, never $0.
  check(want.unpriced_requests > 0, 'the seeded unpriced model is not unpriced in the API');
  const unpriced = await text('#usage-legend li[data-series="claude-experimental"]');
  check(/unpriced/.test(unpriced) && !/\$0(\.0*)?\b/.test(unpriced), `the unpriced model's legend reads "${unpriced}"`);
  // Day by day: each bar's total against the API grouped by day.
  const bars = await page.locator('#usage-chart-table tbody tr[data-bucket]').evaluateAll((trs) =>
    Object.fromEntries(trs.map((tr) => [tr.dataset.bucket, tr.querySelector('td[data-total="true"]').dataset.microUsd])));
  const days = await api(`/usage?${q}&group_by=day`);
  check(days.length === DAYS, `the API has usage on ${days.length} days, ${DAYS} were seeded`);
  for (const r of days) {
    const bar = bars[r.day] ?? bars[Object.keys(bars).find((b) => b.startsWith(r.day))];
    check(Number(bar) === (r.cost_micro_usd ?? 0), `day ${r.day}: bar ${bar} µ$, API ${r.cost_micro_usd}`);
  }
  return `${want.requests} requests, ${want.cost_micro_usd} µ$, ${want.input_total}+${want.output} tokens over ${DAYS} days on the page, its charts and the API`;
});

// slug is the console's id form of a name (docs/ui/README.md).
const slug = (s) => s.replace(/[^A-Za-z0-9._-]/g, '_');

await step('token-issue-use-revoke', async () => {
  await open('tokens');
  await page.fill('#token-issue-workspace', 'ws-ui-test');
  await page.fill('#token-issue-project', PROJECT);
  await page.fill('#token-issue-user', USER);
  await page.selectOption('#token-issue-harness', HARNESS);
  await Promise.all([page.waitForURL(/\/ui\/tokens/), page.click('#token-issue-submit')]);
  const tok = (await page.locator('#token-secret').inputValue()).trim();
  check(tok.startsWith('tgw_'), `the token shown "${tok.slice(0, 8)}…" is not a workspace token`);
  const id = (await text('#token-id')).trim();
  check(id, 'no #token-id on the issued page');
  writes.push({ action: 'token.issue', target: id });
  await shot('token-issued');

  const ok = await infer(tok);
  check(ok.status === 200, `the issued token through the proxy: ${ok.status} ${ok.body}`);

  await page.goto(ui('tokens'));
  check((await page.locator(`#token-${slug(id)}`).getAttribute('data-state')) === 'active', `token ${id} is not listed as active`);
  await page.click(`#token-revoke-${slug(id)}`);
  await Promise.all([page.waitForLoadState('load'), page.click('#token-revoke-submit')]);
  writes.push({ action: 'token.revoke', target: id });
  await page.goto(ui('tokens?state=revoked'));
  const state = await page.locator(`#token-${slug(id)}`).getAttribute('data-state');
  check(state === 'revoked', `token ${id} is listed as ${state} after revoking`);
  await eventually('the proxy refuses the revoked token', async () => {
    const r = await infer(tok);
    return r.status === 401 || r.status;
  });
  return `token ${id}: 200 through the proxy, revoked on the page, then 401`;
});

await step('binding-halted', async () => {
  const before = await infer(PROJECT_TOKEN);
  check(before.status === 200, `project ${PROJECT}'s token before deactivating: ${before.status} ${before.body}`);
  await page.goto(ui('connections/advanced'));
  await shot('advanced');
  await Promise.all([page.waitForLoadState('load'), page.click(`#${BINDING}-deactivate`)]);
  writes.push({ action: 'binding.deactivate', target: `project:${PROJECT}/${DIALECT}` });
  await page.goto(ui(`connections?project=${PROJECT}&user=${USER}`));
  const row = page.locator(`#${CONN}`);
  check((await row.getAttribute('data-source')) === 'halted', `${CONN} data-source=${await row.getAttribute('data-source')} after deactivating, want halted`);
  const badge = await text(`#${CONN}-badge`);
  check(badge === 'Halted', `badge "${badge}", want "Halted"`);
  const reason = await text(`#${CONN}-reason`);
  check(reason === 'binding-inactive', `reason "${reason}", want binding-inactive`);
  await eventually('the proxy answers 403 for the halted project', async () => {
    const r = await infer(PROJECT_TOKEN);
    return halted(r) || r;
  });
  return `${CONN}: Halted (binding-inactive), proxy 403`;
});

await step('csrf-refused', async () => {
  await page.goto(ui('connections/advanced'));
  const button = page.locator(`#${BINDING}-activate`);
  check((await button.count()) === 1, `no ${BINDING}-activate button (is the binding still active?)`);
  // The page's own form, minus its CSRF field: what a forged post carries.
  await button.evaluate((b) => b.form.querySelector('input[name=csrf]').remove());
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/ui/bindings/active') && r.request().method() === 'POST'),
    button.click(),
  ]);
  check(resp.status() === 403, `a post without the CSRF field: ${resp.status()}, want 403`);
  await page.locator('#message').waitFor();
  await page.goto(ui('connections/advanced'));
  check((await page.locator(`#${BINDING}`).getAttribute('data-active')) === 'false', 'the refused post changed the binding');
  const still = await infer(PROJECT_TOKEN);
  check(halted(still), `after the refused post the proxy answers ${still.status} ${still.body}`);
  return '403, binding unchanged';
});

// submitPolicy posts one of the Budgets page's forms and returns the id
// the redirect names (?limit= or ?rule=), checking its row is listed.
async function submitPolicy(submit, param, rowPrefix) {
  await Promise.all([page.waitForURL((u) => u.pathname === '/ui/budgets' && u.searchParams.has(param)), page.click(submit)]);
  const u = new URL(page.url());
  const id = u.searchParams.get(param);
  check(u.searchParams.get('result') === 'created', `${param} ${id}: result=${u.searchParams.get('result')}, want created`);
  check((await page.locator(`#${rowPrefix}-${slug(id)}`).count()) === 1, `${param} ${id} is not listed on the Budgets page`);
  return id;
}

// deletePolicy clicks a row's delete button and checks the row is gone.
async function deletePolicy(rowPrefix, id) {
  await Promise.all([page.waitForURL((u) => u.searchParams.get('deleted') === id), page.click(`#${rowPrefix}-${slug(id)}-delete`)]);
  check((await page.locator(`#${rowPrefix}-${slug(id)}`).count()) === 0, `${id} is still listed after deleting it`);
}

await step('rate-limit', async () => {
  await open('budgets');
  await page.selectOption('#limit-scope-type', 'workspace');
  await page.fill('#limit-scope-id', LIMIT_WORKSPACE);
  await page.fill('#limit-rpm', '1');
  const id = await submitPolicy('#limit-submit', 'limit', 'limit');
  writes.push({ action: 'limit.set', target: id });
  // The console reloads this replica's policies before it redirects, so
  // the limit applies from the next request: RPM 1 admits one a minute.
  const first = await infer(LIMIT_TOKEN);
  check(first.status === 200, `the first request under RPM 1: ${first.status} ${first.body}`);
  const second = await infer(LIMIT_TOKEN);
  check(second.status === 429, `the second request under RPM 1: ${second.status} ${second.body}, want 429`);
  const wait = Number(second.headers.get('retry-after'));
  check(Number.isInteger(wait) && wait >= 1 && wait <= 60, `Retry-After ${second.headers.get('retry-after')}, want 1 to 60 seconds`);
  const e = anthropicError(second);
  check(e.type === 'rate_limit_error', `error type ${e.type}, want rate_limit_error`);
  await deletePolicy('limit', id);
  writes.push({ action: 'limit.delete', target: id });
  // No limit is left on the workspace, so nothing waits out the minute.
  const after = await infer(LIMIT_TOKEN);
  check(after.status === 200, `after deleting the limit: ${after.status} ${after.body}`);
  return `${id}: 200, then 429 (Retry-After ${wait}, ${e.type}); deleted, then 200`;
});

await step('model-rule', async () => {
  const model = 'claude-haiku-4-5';
  const before = await infer(RULE_TOKEN, model);
  check(before.status === 200, `${model} for project ${RULE_PROJECT} before the rule: ${before.status} ${before.body}`);
  await open('budgets');
  await page.selectOption('#rule-scope-type', 'project');
  await page.fill('#rule-scope-id', RULE_PROJECT);
  await page.selectOption('#rule-kind', 'deny');
  await page.fill('#rule-pattern', 'claude-haiku-*');
  const id = await submitPolicy('#rule-submit', 'rule', 'rule');
  writes.push({ action: 'model_rule.set', target: id });
  const denied = await infer(RULE_TOKEN, model);
  check(denied.status === 403, `${model} under a deny rule: ${denied.status} ${denied.body}, want 403`);
  const e = anthropicError(denied);
  check(e.type === 'permission_error', `error type ${e.type}, want permission_error`);
  // The rule is the pattern's: another model of the project is served.
  const other = await infer(RULE_TOKEN, 'claude-sonnet-4-5');
  check(other.status === 200, `claude-sonnet-4-5 beside the deny rule: ${other.status} ${other.body}`);
  await deletePolicy('rule', id);
  writes.push({ action: 'model_rule.delete', target: id });
  const served = await infer(RULE_TOKEN, model);
  check(served.status === 200, `${model} after deleting the rule: ${served.status} ${served.body}`);
  return `${id}: ${model} 403 (${e.type}), claude-sonnet-4-5 200; deleted, then 200`;
});

await step('audit-log', async () => {
  await open('audit');
  check(writes.length > 0, 'no write was made on the pages to look for');
  await page.locator('#audit-table').waitFor();
  const missing = [];
  for (const w of writes) {
    const row = page.locator(`#audit-table tr[data-action="${w.action}"][data-target="${w.target}"]`);
    if ((await row.count()) === 0 || (await row.first().getAttribute('data-actor-kind')) !== 'console') missing.push(w);
  }
  check(missing.length === 0, `the audit page lacks, as console writes, ${JSON.stringify(missing)}`);
  // The post the CSRF step had refused changed nothing, so left no entry.
  const refused = await page.locator('#audit-table tr[data-action="binding.activate"]').count();
  check(refused === 0, `the audit page shows ${refused} binding.activate entries; the only activation tried was refused`);
  return `shows ${writes.map((w) => `${w.action} ${w.target}`).join(', ')}`;
});

// The pages the steps above did not photograph; a placeholder is left
// out, so docs/ui never shows a page that is not there.
await step('screenshots', async () => {
  const taken = [];
  // The usage page's filters fill the first screen: its picture starts at
  // the totals, with the cost chart below them.
  const scroll = { usage: '#usage-totals-h' };
  for (const name of ['usage', 'tokens', 'credentials', 'budgets', 'audit']) {
    await open(name);
    await shot(name, scroll[name]);
    taken.push(name);
  }
  return `took ${taken.join(', ')}`;
});

await step('signout', async () => {
  await page.goto(ui('connections'));
  await Promise.all([page.waitForURL(/\/ui\/signin/), page.click('#signout')]);
  await page.goto(ui('connections'));
  check(new URL(page.url()).pathname === '/ui/signin', `after signing out /ui/connections went to ${page.url()}`);
  return 'signed out; pages go to sign-in again';
});

// focused describes the element with focus, and whether a sighted
// keyboard user sees where it is: on screen, not hidden, with an outline.
async function focused() {
  return page.evaluate(() => {
    const el = document.activeElement;
    if (!el || el === document.body) return { id: '', what: 'nothing (body)' };
    const r = el.getBoundingClientRect();
    const cs = getComputedStyle(el);
    return {
      id: el.id,
      what: `${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''} "${(el.innerText || el.value || '').trim().slice(0, 30)}"`,
      onScreen: r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0 && r.right <= innerWidth && r.bottom <= innerHeight,
      shown: cs.visibility !== 'hidden' && cs.display !== 'none' && Number(cs.opacity) > 0,
      outline: `${cs.outlineStyle} ${cs.outlineWidth} ${cs.outlineColor}`,
      ring: cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) >= 2,
      focusVisible: el.matches(':focus-visible'),
    };
  });
}

// tab presses Tab and checks the stop it lands on can be seen.
async function tab(stops) {
  await page.keyboard.press('Tab');
  const f = await focused();
  check(f.id !== '' || f.what !== 'nothing (body)', `Tab after ${stops.join(' → ')} reached nothing`);
  check(f.onScreen && f.shown, `the focused ${f.what} is not on screen (after ${stops.join(' → ')})`);
  check(f.ring && f.focusVisible, `the focused ${f.what} shows no focus outline (outline ${f.outline}, :focus-visible ${f.focusVisible})`);
  stops.push(f.id || f.what);
  return f;
}

// Signed out by the step before: sign in and move about with the keyboard
// alone, checking at each stop that the focus can be seen.
await step('keyboard', async () => {
  await page.goto(ui('signin'));
  const stops = [];
  for (;;) {
    check(stops.length < 4, `the token field is not among the first Tab stops: ${stops.join(' → ')}`);
    if ((await tab(stops)).id === 'signin-token') break;
  }
  await page.keyboard.type(ADMIN_TOKEN);
  await Promise.all([page.waitForURL(/\/ui\/connections/), page.keyboard.press('Enter')]);
  const signin = stops.join(' → ');
  const nav = ['nav-connections', 'nav-usage', 'nav-tokens', 'nav-credentials', 'nav-budgets', 'nav-audit'];
  const seen = [];
  while (!nav.every((id) => seen.includes(id))) {
    check(seen.length < nav.length + 3, `Tab does not reach every navigation link: ${seen.join(' → ')}`);
    await tab(seen);
  }
  const order = seen.filter((id) => nav.includes(id));
  check(order.join() === nav.join(), `the navigation links are reached as ${order.join(', ')}`);
  // Focus is on the last link: Enter follows it.
  await Promise.all([page.waitForURL(/\/ui\/audit$/), page.keyboard.press('Enter')]);
  check((await page.locator('#nav-audit').getAttribute('aria-current')) === 'page', 'Enter on nav-audit did not make Audit the current page');
  return `sign-in: ${signin}, Enter; then ${seen.join(' → ')}, Enter: /ui/audit; every stop on screen with an outline`;
});

await browser.close();
