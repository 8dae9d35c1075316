// The call-quality dashboard in headless Chromium: a `lodge-load voice` crowd on an impaired
// path (10% bursty loss) fills the node; the page, opened with the operator token, must show
// the channel and its participants with the values of the live API, colour the lossy ones red,
// and list the call summaries exactly as GET /api/v10/quality/calls returns them.
//
// Usage: LODGE_URL=... OPERATOR_TOKEN=... LOAD_BIN=path/to/lodge-load node dashboard.test.mjs

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const BASE = process.env.LODGE_URL || 'http://127.0.0.1:8080';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OPERATOR = process.env.OPERATOR_TOKEN;
const LOAD = process.env.LOAD_BIN;
const log = (...a) => console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
assert.ok(OPERATOR && LOAD, 'OPERATOR_TOKEN and LOAD_BIN must be set (run.sh sets them)');

const api = async (path) => {
  const r = await fetch(`${BASE}/api/v10${path}`, { headers: { Authorization: `Operator ${OPERATOR}` } });
  assert.equal(r.status, 200, `${path}: ${r.status}`);
  return r.json();
};

async function main() {
  // The crowd: 6 callers, 2 speakers, 10% bursty loss both ways, for ~20 s of measurement.
  const load = spawn(LOAD, ['voice', '--url', BASE, '-n', '6', '-s', '2', '-d', '20', '--probes', '0',
    '--profile', 'bursty_10'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const loadDone = new Promise((res) => load.on('exit', (code) => res(code)));

  const ctx = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'lodge-dash-')), {
    executablePath: CHROMIUM, headless: false,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('pageerror', (e) => log('page error:', e.message));
  await page.goto(`${BASE}/dashboard`);
  // No web-client session: the page asks for the operator token.
  await page.waitForSelector('#login-card:not([hidden])');
  await page.fill('#op-token', 'wrong-token-wrong-token');
  await page.click('#op-form button');
  await page.waitForFunction(() => document.getElementById('login-error').textContent.includes('refused'));
  await page.fill('#op-token', OPERATOR);
  await page.click('#op-form button');
  await page.waitForSelector('#status[data-state="live"]', { timeout: 15000 });
  log('dashboard live');

  // Wait for the crowd's channel with all six callers.
  await page.waitForFunction(() => {
    const t = document.querySelector('#channels table');
    return t && t.querySelectorAll('tbody tr').length === 6;
  }, null, { timeout: 60000 });
  log('six participants on the page');
  // Let quality figures (RTCP) accumulate, then compare the page with its snapshot and the API.
  await page.waitForFunction(() => document.querySelectorAll('#channels td.bad[data-field="loss_in"]').length > 0,
    null, { timeout: 30000 });
  const { snap, cells } = await page.evaluate(() => ({
    snap: window.dashboard.last,
    cells: [...document.querySelectorAll('#channels tbody tr')].map((tr) => ({
      user: tr.dataset.user,
      mos: tr.querySelector('[data-field="mos"]').textContent,
      mosBad: tr.querySelector('[data-field="mos"]').className === 'bad',
      lossIn: tr.querySelector('[data-field="loss_in"]').textContent,
    })),
  }));
  const ch = snap.channels[0];
  for (const c of cells) {
    const p = ch.participants.find((x) => x.user_id === c.user);
    assert.ok(p, `page row ${c.user} is in the snapshot`);
    const want = p.mos_estimate === null ? '–' : p.mos_estimate.toFixed(2);
    assert.equal(c.mos, want, `MOS cell of ${c.user}`);
    assert.equal(c.mosBad, p.mos_estimate !== null && p.mos_estimate < 3.5, `MOS colour of ${c.user}`);
    assert.equal(c.lossIn, p.loss_in_pct === null ? '–' : p.loss_in_pct.toFixed(2));
  }
  const live = await api('/quality/node');
  const apiCh = live.channels.find((x) => x.id === ch.id);
  assert.ok(apiCh, 'the API lists the page\'s channel');
  assert.deepEqual(apiCh.participants.map((p) => p.user_id).sort(), cells.map((c) => c.user).sort());
  for (const p of apiCh.participants) {
    const c = cells.find((x) => x.user === p.user_id);
    if (p.mos_estimate !== null && c.mos !== '–') {
      assert.ok(Math.abs(p.mos_estimate - Number(c.mos)) < 0.6, `MOS of ${p.user_id}: API ${p.mos_estimate} page ${c.mos}`);
    }
  }
  log(`page matches the snapshot and the API; ${cells.filter((c) => c.mosBad).length} MOS cells red`);

  // When the crowd leaves, its call summaries appear, exactly as the API has them.
  const code = await loadDone;
  assert.equal(code, 0, 'lodge-load voice succeeded');
  await page.waitForFunction(() => document.querySelectorAll('#calls tbody tr').length >= 6, null, { timeout: 20000 });
  const rows = await page.evaluate(() => [...document.querySelectorAll('#calls tbody tr')].map((tr) => ({
    id: tr.dataset.call, mos: tr.querySelector('[data-field="mos"]').textContent,
    user: tr.querySelector('[data-field="user"]').textContent,
  })));
  const calls = await api('/quality/calls?limit=20');
  for (const r of rows) {
    const c = calls.find((x) => x.id === r.id);
    assert.ok(c, `call ${r.id} is in the API`);
    assert.equal(r.user, c.user_id);
    assert.equal(r.mos, c.mos_estimate === null ? '–' : c.mos_estimate.toFixed(2));
  }
  log(`${rows.length} call summaries on the page match GET /quality/calls`);
  await ctx.close();
  console.log('PASS');
}

main().catch((e) => { console.error('FAIL:', e); process.exit(1); });
