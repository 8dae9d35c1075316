// Three real headless Chromium clients use the web client to join one voice channel through a
// running lodge node; each must hear the others, and a muted client must stop being heard.
//
// Usage: LODGE_URL=http://127.0.0.1:8080 node voice.test.mjs   (run.sh starts the node)
// Against a cluster: VOICE_REGIONS=eu,us,origin places alice, bob and carol by region hint
// (the web client's ?region=); tests/cluster/run.sh does that.

import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { writeWav } from './wav.mjs';
import { launchVoiceBrowser } from './launch.mjs';

const BASE = process.env.LODGE_URL || 'http://127.0.0.1:8080';
const REGIONS = (process.env.VOICE_REGIONS || '').split(',').filter(Boolean);
let clients = 0;
const work = mkdtempSync(join(tmpdir(), 'lodge-browser-'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...a);

async function client(name, f0) {
  const wav = join(work, `${name}.wav`);
  writeWav(wav, f0);
  const ctx = await launchVoiceBrowser(join(work, `profile-${name}`), wav);
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('console', (m) => { if (m.type() === 'error') log(`${name} console:`, m.text()); });
  page.on('pageerror', (e) => log(`${name} page error:`, e.message));
  const region = REGIONS.length ? REGIONS[clients++ % REGIONS.length] : null;
  await page.goto(region ? `${BASE}/?region=${region}` : BASE);
  await page.fill('#username', name);
  await page.fill('#password', `password-${name}`);
  await page.click('#register-btn');
  await page.waitForFunction(() => window.lodge && window.lodge.state.user, null, { timeout: 15000 });
  const id = await page.evaluate(() => window.lodge.state.user.id);
  log(`${name} registered as ${id}`);
  return { name, ctx, page, id };
}

const stats = (c) => c.page.evaluate(() => window.lodge.slotStats());

async function main() {
  const alice = await client('alice', 180);
  const bob = await client('bob', 240);
  const carol = await client('carol', 310);
  const all = [alice, bob, carol];

  // Alice creates a guild in the UI and an invite; the others join with it.
  await alice.page.fill('#new-guild-name', 'Browser Den');
  await alice.page.click('#new-guild button');
  await alice.page.waitForSelector('#guild-list li.active');
  await alice.page.click('#invite-btn');
  await alice.page.waitForFunction(() => document.getElementById('invite-out').dataset.code);
  const code = await alice.page.getAttribute('#invite-out', 'data-code');
  log(`invite ${code}`);
  for (const c of [bob, carol]) {
    await c.page.fill('#invite-code', code);
    await c.page.click('#join-invite button');
    await c.page.waitForSelector('#guild-list li.active');
  }

  // Everyone joins the voice channel "General".
  for (const c of all) {
    await c.page.click('#channel-list li[data-type="2"]');
  }
  for (const c of all) {
    await c.page.waitForSelector('#voice-status[data-state="connected"]', { timeout: 30000 });
    log(`${c.name} voice connected`);
  }

  // Each receives the other two: packets grow and the decoded audio has level.
  const deadline = Date.now() + 30000;
  let ok = false;
  let last = null;
  while (Date.now() < deadline && !ok) {
    await sleep(1000);
    ok = true;
    last = {};
    for (const c of all) {
      const s = await stats(c);
      last[c.name] = s;
      for (const other of all.filter((o) => o !== c)) {
        const slot = s.find((x) => x.user === other.id);
        if (!slot || slot.packetsReceived < 100 || slot.audioLevel <= 0.01) ok = false;
      }
      // Never the listener's own voice.
      assert.ok(!s.some((x) => x.user === c.id), `${c.name} got its own voice in a slot`);
    }
  }
  assert.ok(ok, `not everyone hears everyone: ${JSON.stringify(last, null, 1)}`);
  log('all three hear each other', JSON.stringify(last));

  // The UI lists all three in the voice channel and shows speaking indicators.
  for (const c of all) {
    const n = await c.page.locator('ul.voice-users li').count();
    assert.equal(n, 3, `${c.name} lists ${n} users in voice`);
  }
  await alice.page.waitForSelector(`ul.voice-users li.speaking[data-user-id="${bob.id}"]`, { timeout: 5000 });

  // Carol mutes: within about a second nobody receives her any more.
  const before = await stats(alice);
  const carolSsrc = before.find((x) => x.user === carol.id).ssrc;
  await carol.page.click('#mute-btn');
  await sleep(1500);
  const a1 = (await stats(alice)).find((x) => x.ssrc === carolSsrc);
  const b1 = (await stats(bob)).find((x) => x.user === alice.id);
  await sleep(2000);
  const a2 = (await stats(alice)).find((x) => x.ssrc === carolSsrc);
  const b2 = (await stats(bob)).find((x) => x.user === alice.id);
  assert.equal(a2.packetsReceived - a1.packetsReceived, 0, `alice still receives muted carol: ${JSON.stringify([a1, a2])}`);
  assert.ok(!(await stats(alice)).some((x) => x.user === carol.id), 'carol still announced in a slot after muting');
  assert.ok(b2.packetsReceived - b1.packetsReceived > 50, 'bob stopped hearing alice');
  await alice.page.waitForSelector(`ul.voice-users li[data-user-id="${carol.id}"] .flags`, { timeout: 5000 });
  log('muted client is no longer heard');

  // Server-side figures agree: carol's packets are dropped as muted.
  const token = await alice.page.evaluate(() => window.lodge.state.token);
  const res = await fetch(`${BASE}/api/v10/voice/stats`, { headers: { Authorization: token } });
  const report = await res.json();
  log('server report', JSON.stringify(report));
  const carolPeer = report.peers.find((p) => p.user === carol.id);
  assert.ok(carolPeer && carolPeer.drops.some(([r, n]) => r === 'muted' && n > 10), `no muted drops for carol: ${JSON.stringify(carolPeer)}`);
  assert.ok(report.rtp_forwarded > 500, `rtp_forwarded ${report.rtp_forwarded}`);
  const alicePeer = report.peers.find((p) => p.user === alice.id);
  if (REGIONS.length && REGIONS[0] !== 'origin') {
    // Alice is on an edge: this node sees her only as a remote speaker.
    assert.ok(!alicePeer, 'alice should not be a WebRTC participant of the origin');
    assert.ok(report.remote_speakers >= 1, `remote speakers ${report.remote_speakers}`);
  } else {
    assert.ok(alicePeer.stats.packets_in > 100 && alicePeer.stats.packets_out > 100, JSON.stringify(alicePeer.stats));
  }

  // Closing a tab frees its participant (voice state disappears for the others).
  await bob.ctx.close();
  await alice.page.waitForFunction((id) => !document.querySelector(`ul.voice-users li[data-user-id="${id}"]`), bob.id, { timeout: 12000 });
  log('closed tab left the channel');

  await alice.ctx.close();
  await carol.ctx.close();
  log('PASS');
}

main().catch((e) => { console.error('FAIL:', e); process.exit(1); });
