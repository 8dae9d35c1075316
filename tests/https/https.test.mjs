// Driven by tests/https/run.sh: the web client at https://lodge.test:8443/ (a name mapped to a
// test address, a certificate from a CA made at test time), two callers hear each other.

import { createRequire } from 'node:module';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { writeWav } from '../browser/wav.mjs';

const require = createRequire(new URL('../browser/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const BASE = process.env.LODGE_URL;
const HOST = new URL(BASE).hostname;
const work = mkdtempSync(join(tmpdir(), 'lodge-https-'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...a);

async function browser(name, f0, { pin = true } = {}) {
  const wav = join(work, `${name}.wav`);
  writeWav(wav, f0);
  return chromium.launchPersistentContext(join(work, `profile-${name}`), {
    executablePath: '/usr/bin/chromium',
    headless: false,
    args: [
      '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--autoplay-policy=no-user-gesture-required', `--use-file-for-fake-audio-capture=${wav}`,
      // The name resolves to the node's test address only inside this browser.
      `--host-resolver-rules=MAP ${HOST} ${process.env.LODGE_ADDR}`,
      ...(pin ? [`--ignore-certificate-errors-spki-list=${process.env.CERT_SPKI}`] : []),
    ],
  });
}

async function client(name, f0) {
  const ctx = await browser(name, f0);
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('console', (m) => { if (m.type() === 'error') log(`${name} console:`, m.text()); });
  page.on('pageerror', (e) => log(`${name} page error:`, e.message));
  await page.goto(BASE);
  const where = await page.evaluate(() => ({ origin: location.origin, secure: window.isSecureContext, mic: !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia) }));
  assert.deepEqual(where, { origin: BASE, secure: true, mic: true }, `${name}: ${JSON.stringify(where)}`);
  await page.fill('#username', name);
  await page.fill('#password', `password-${name}`);
  await page.click('#register-btn');
  await page.waitForFunction(() => window.lodge && window.lodge.state.user, null, { timeout: 15000 });
  const id = await page.evaluate(() => window.lodge.state.user.id);
  log(`${name} registered as ${id} at ${where.origin}`);
  return { name, ctx, page, id };
}

const slot = async (c, other) => (await c.page.evaluate(() => window.lodge.slotStats())).find((x) => x.user === other.id);

async function main() {
  // Without the pin the certificate is not trusted: the page must not load.
  const stranger = await browser('stranger', 200, { pin: false });
  const err = await (stranger.pages()[0] || (await stranger.newPage())).goto(BASE).then(() => null, (e) => e.message);
  assert.ok(err && err.includes('ERR_CERT_AUTHORITY_INVALID'), `an unpinned browser loaded the page: ${err}`);
  await stranger.close();
  log('without the pin: refused (ERR_CERT_AUTHORITY_INVALID)');

  const alice = await client('alice', 180);
  const bob = await client('bob', 240);
  await alice.page.fill('#new-guild-name', 'Secure Den');
  await alice.page.click('#new-guild button');
  await alice.page.waitForSelector('#guild-list li.active');
  await alice.page.click('#invite-btn');
  await alice.page.waitForFunction(() => document.getElementById('invite-out').dataset.code);
  const code = await alice.page.getAttribute('#invite-out', 'data-code');
  await bob.page.fill('#invite-code', code);
  await bob.page.click('#join-invite button');
  await bob.page.waitForSelector('#guild-list li.active');

  for (const c of [alice, bob]) await c.page.click('#channel-list li[data-type="2"]');
  for (const c of [alice, bob]) {
    await c.page.waitForSelector('#voice-status[data-state="connected"]', { timeout: 30000 });
    const ws = await c.page.evaluate(() => window.lodge.state.voice.ws.url);
    assert.ok(ws.startsWith(`wss://${new URL(BASE).host}/`), `${c.name}'s voice gateway: ${ws}`);
    log(`${c.name} voice connected over ${ws}`);
  }
  const deadline = Date.now() + 20000;
  let last = null;
  for (;;) {
    const ab = await slot(alice, bob);
    const ba = await slot(bob, alice);
    last = { aliceHearsBob: ab, bobHearsAlice: ba };
    const good = (s) => s && s.packetsReceived >= 100 && s.audioLevel > 0.01;
    if (good(ab) && good(ba)) break;
    assert.ok(Date.now() < deadline, `no two-way audio: ${JSON.stringify(last)}`);
    await sleep(500);
  }
  log('alice and bob hear each other', JSON.stringify(last));
  await alice.ctx.close();
  await bob.ctx.close();
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
