// The browser half of signaling/tests/songbird_mixed.rs (which starts the node, the songbird
// clients and this script): headless Chromium web clients, each speaking a steady tone, join the
// guild of INVITE and its voice channel, asking for SLOTS speaker slots. Once every one is
// connected the script reports the users it registered; then it waits until every browser's
// slots hold exactly the speakers the ranking says it should hear, and hears the native
// speaker's tone (WebAudio on the slot's track) — or fails after 35 s saying what each hears.
//
// Input (environment): LODGE_URL, INVITE, SLOTS, SPEAKERS (JSON [{name, hz, amp}], the browsers),
// NATIVE (JSON {name, id, hz}: the songbird speaker), RANKING (JSON [name], loudest first:
// browsers and the native speaker). Output: lines `@@ {json}` on stdout for the Rust test
// (`joined`, `heard`); anything else is log. Closing stdin ends the call and the script.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeToneWav } from './wav.mjs';
import { hearing, joinVoiceChannel, launchVoiceBrowser } from './launch.mjs';

const BASE = process.env.LODGE_URL;
const INVITE = process.env.INVITE;
const SLOTS = Number(process.env.SLOTS);
const SPEAKERS = JSON.parse(process.env.SPEAKERS);
const NATIVE = JSON.parse(process.env.NATIVE);
const RANKING = JSON.parse(process.env.RANKING);
const work = mkdtempSync(join(tmpdir(), 'lodge-mixed-'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...a);
const report = (event, d) => console.log(`@@ ${JSON.stringify({ event, ...d })}`);

async function client({ name, hz, amp }) {
  const wav = join(work, `${name}.wav`);
  writeToneWav(wav, hz, amp);
  const ctx = await launchVoiceBrowser(join(work, `profile-${name}`), wav);
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('console', (m) => { if (m.type() === 'error') log(`${name} console:`, m.text()); });
  page.on('pageerror', (e) => log(`${name} page error:`, e.message));
  const id = await joinVoiceChannel(page, BASE, name, INVITE, `?slots=${SLOTS}`);
  log(`${name} (${id}) in voice at ${hz} Hz, peak ${amp}`);
  return { name, ctx, page, id };
}

async function main() {
  if (!BASE || !INVITE || !SLOTS) throw new Error('run by signaling/tests/songbird_mixed.rs (LODGE_URL, INVITE, SLOTS unset)');
  const browsers = await Promise.all(SPEAKERS.map(client));
  const ids = Object.fromEntries([...browsers.map((b) => [b.name, b.id]), [NATIVE.name, NATIVE.id]]);
  report('joined', { users: ids });

  // Listener L should hear the first SLOTS of the ranking other than itself, the native
  // speaker among them, with its tone dominating that slot.
  const freqs = [NATIVE.hz, ...SPEAKERS.map((s) => s.hz)];
  const expected = (name) => RANKING.filter((n) => n !== name).slice(0, SLOTS).map((n) => ids[n]).sort();
  const nameOf = Object.fromEntries(Object.entries(ids).map(([n, id]) => [id, n]));
  const deadline = Date.now() + 35000;
  let last = {};
  let ok = false;
  const before = new Map();
  while (!ok && Date.now() < deadline) {
    await sleep(1000);
    ok = true;
    for (const b of browsers) {
      const slots = await b.page.evaluate(hearing, freqs);
      // Only slots that are flowing count: a speaker is heard if its slot gained packets.
      const flowing = slots.filter((s) => s.user && s.packetsReceived > (before.get(`${b.name}/${s.ssrc}`) ?? Infinity));
      for (const s of slots) before.set(`${b.name}/${s.ssrc}`, s.packetsReceived);
      const heard = flowing.map((s) => s.user).sort();
      const native = flowing.find((s) => s.user === NATIVE.id);
      const nativeShare = native ? native.shares[NATIVE.hz] : 0;
      last[b.name] = {
        hears: heard.map((id) => nameOf[id] || id),
        expected: expected(b.name).map((id) => nameOf[id]),
        nativeShare: Number(nativeShare.toFixed(3)),
        slots: slots.map((s) => ({ user: nameOf[s.user] || s.user, packets: s.packetsReceived, level: s.audioLevel, rms: Number(s.rms.toFixed(4)), shares: s.shares })),
      };
      if (JSON.stringify(heard) !== JSON.stringify(expected(b.name)) || nativeShare <= 0.5) ok = false;
    }
  }
  report('heard', { ok, browsers: last });
  if (!ok) throw new Error(`browsers do not hear what the ranking says: ${JSON.stringify(last, null, 1)}`);
  log('every browser hears its top speakers, the native tone among them');

  // Stay in the call until the Rust side has recorded (it closes our stdin).
  await new Promise((r) => { process.stdin.on('end', r); process.stdin.on('close', r); process.stdin.resume(); });
  await Promise.all(browsers.map((b) => b.ctx.close()));
}

// A bound of our own, below the Rust test's: a hung browser must not hold the test.
const watchdog = setTimeout(() => { console.error('FAIL: mixed-call.mjs watchdog (80 s)'); process.exit(1); }, 80000);
main()
  .then(() => { clearTimeout(watchdog); rmSync(work, { recursive: true, force: true }); })
  .catch((e) => { console.error('FAIL:', e); process.exit(1); });
