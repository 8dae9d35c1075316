// Driven by tests/turn/run.sh (it builds the namespaces, the firewall, coturn and the node).
// Bob (on the node's side) and alice (behind the firewall) join one voice channel with the web
// client; alice rejoins in four phases:
//   direct   no firewall, no relay           → media flows (host candidates; the baseline)
//   blocked  firewall up, no relay           → no media (the firewall really blocks)
//   tcp      firewall up, turn:…?transport=tcp → media through coturn over TCP
//   tls      firewall up, turns:…            → media through coturn over TLS
// Which relays alice may use is chosen by filtering the ice_servers the node sent in Ready (the
// web client passes them to RTCPeerConnection unchanged); the node always offers both.

import { createRequire } from 'node:module';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { writeWav } from '../browser/wav.mjs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const require = createRequire(new URL('../browser/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const BASE = process.env.LODGE_URL;
const work = mkdtempSync(join(tmpdir(), 'lodge-turn-'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...a);
const drops = () => Number(execFileSync(process.env.FIREWALL_DROPS).toString().trim());

// Keeps only the relays of window.__relay ('none', 'tcp' = turn: URLs, 'tls' = turns: URLs) and
// remembers what the node sent.
const FILTER = () => {
  const Native = window.RTCPeerConnection;
  function Filtered(cfg = {}, ...rest) {
    window.__given = cfg.iceServers;
    const keep = (u) => (window.__relay === 'tcp' ? u.startsWith('turn:') : window.__relay === 'tls' ? u.startsWith('turns:') : false);
    const iceServers = (cfg.iceServers || [])
      .map((s) => ({ ...s, urls: [].concat(s.urls).filter(keep) }))
      .filter((s) => s.urls.length);
    return new Native({ ...cfg, iceServers }, ...rest);
  }
  Filtered.prototype = Native.prototype;
  window.RTCPeerConnection = Filtered;
};

async function client(name, f0, executablePath) {
  const wav = join(work, `${name}.wav`);
  writeWav(wav, f0);
  const ctx = await chromium.launchPersistentContext(join(work, `profile-${name}`), {
    executablePath,
    headless: false,
    args: [
      '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--autoplay-policy=no-user-gesture-required', `--use-file-for-fake-audio-capture=${wav}`,
      // The page is plain http on a test address; the microphone needs a secure context.
      `--unsafely-treat-insecure-origin-as-secure=${BASE}`,
      // coturn's certificate is made by run.sh: trust exactly its key.
      `--ignore-certificate-errors-spki-list=${process.env.TURN_SPKI}`,
    ],
  });
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('console', (m) => { if (m.type() === 'error') log(`${name} console:`, m.text()); });
  page.on('pageerror', (e) => log(`${name} page error:`, e.message));
  await page.addInitScript(FILTER);
  await page.goto(BASE);
  await page.fill('#username', name);
  await page.fill('#password', `password-${name}`);
  await page.click('#register-btn');
  await page.waitForFunction(() => window.lodge && window.lodge.state.user, null, { timeout: 15000 });
  const id = await page.evaluate(() => window.lodge.state.user.id);
  log(`${name} registered as ${id}`);
  return { name, ctx, page, id };
}

// The transport alice's call uses, and the figures that say what it costs.
const transport = (c) => c.page.evaluate(async () => {
  const pc = window.lodge.state.voice && window.lodge.state.voice.pc;
  if (!pc) return null;
  const st = await pc.getStats();
  let pair = null;
  st.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = st.get(s.selectedCandidatePairId); });
  const local = pair && st.get(pair.localCandidateId);
  const remote = pair && st.get(pair.remoteCandidateId);
  let rtcpRtt = null;
  st.forEach((s) => { if (s.type === 'remote-inbound-rtp' && s.kind === 'audio' && s.roundTripTime != null) rtcpRtt = s.roundTripTime; });
  const inbound = [];
  st.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'audio' && s.packetsReceived > 0) {
      inbound.push({ jitterBufferDelay: s.jitterBufferDelay, emitted: s.jitterBufferEmittedCount, jitter: s.jitter });
    }
  });
  return {
    rtt: pair ? pair.currentRoundTripTime : null,
    rtcpRtt,
    localType: local && local.candidateType,
    relayProtocol: local && local.relayProtocol,
    localAddress: local && `${local.address}:${local.port}`,
    remoteAddress: remote && `${remote.address}:${remote.port}`,
    inbound,
  };
});

const slot = async (c, other) => (await c.page.evaluate(() => window.lodge.slotStats())).find((x) => x.user === other.id);

async function joinVoice(c) {
  await c.page.click('#channel-list li[data-type="2"]');
}

async function leave(c) {
  await c.page.click('#leave-btn');
  await c.page.waitForFunction(() => !window.lodge.state.voice, null, { timeout: 5000 });
}

// Packets each of `c`'s slots has received so far, by SSRC (a slot keeps its SSRC across
// speakers, so counts are compared against these, never taken as they are).
const received = async (c) => new Map((await c.page.evaluate(() => window.lodge.slotStats())).map((x) => [x.ssrc, x.packetsReceived]));

// `received`, once it has stopped moving: a speaker who just left may still have packets in
// flight, and Chromium's stats lag by a few hundred ms, so a snapshot taken at once can be
// overtaken by the last packets of the previous call.
async function settled(c) {
  let last = await received(c);
  for (let i = 0; i < 20; i++) {
    await sleep(500);
    const now = await received(c);
    const same = now.size === last.size && [...now].every(([ssrc, p]) => last.get(ssrc) === p);
    if (same) return now;
    last = now;
  }
  throw new Error(`${c.name}'s received counters did not settle within 10 s`);
}

// Both hear each other within 20 s: at least 100 packets more than at `base` (bob's counts
// before alice joined) and decoded audio with level.
async function hearEachOther(a, b, base) {
  const deadline = Date.now() + 20000;
  let last = null;
  while (Date.now() < deadline) {
    const ab = await slot(a, b);
    const ba = await slot(b, a);
    const fresh = (s, since) => s && s.packetsReceived - (since.get(s.ssrc) || 0);
    last = { [`${a.name} hears ${b.name}`]: ab, [`${b.name} hears ${a.name}`]: ba, [`${b.name}'s new packets`]: fresh(ba, base) };
    const good = (s, since) => s && fresh(s, since) >= 100 && s.audioLevel > 0.01;
    if (good(ab, new Map()) && good(ba, base)) return last;
    await sleep(500);
  }
  assert.fail(`no two-way audio: ${JSON.stringify(last)}`);
}

// Median of per-second samples over `seconds`: RTT of the selected pair, and the jitter buffer's
// mean delay over each second (delta of jitterBufferDelay / delta of emitted samples).
async function measure(c, seconds) {
  const rtts = [];
  const rtcp = [];
  const jb = [];
  let prev = await transport(c);
  for (let i = 0; i < seconds; i++) {
    await sleep(1000);
    const t = await transport(c);
    if (t.rtt != null) rtts.push(t.rtt * 1000);
    if (t.rtcpRtt != null) rtcp.push(t.rtcpRtt * 1000);
    const [p, q] = [prev.inbound[0], t.inbound[0]];
    if (p && q && q.emitted > p.emitted) jb.push(((q.jitterBufferDelay - p.jitterBufferDelay) / (q.emitted - p.emitted)) * 1000);
    prev = t;
  }
  const median = (xs) => { const s = [...xs].sort((x, y) => x - y); return s.length ? s[Math.floor(s.length / 2)] : null; };
  const max = (xs) => (xs.length ? Math.max(...xs) : null);
  return { rtt_ms_p50: median(rtts), rtt_ms_max: max(rtts), rtcp_rtt_ms_p50: median(rtcp), rtcp_rtt_ms_max: max(rtcp), jitter_buffer_ms_p50: median(jb), jitter_buffer_ms_max: max(jb), samples: rtts.length };
}

async function phase(alice, bob, relay) {
  await alice.page.evaluate((r) => { window.__relay = r; }, relay);
  const base = await received(bob);
  await joinVoice(alice);
  await alice.page.waitForSelector('#voice-status[data-state="connected"]', { timeout: 30000 });
  const heard = await hearEachOther(alice, bob, base);
  const t = await transport(alice);
  log(`${relay}: connected via ${t.localType}${t.relayProtocol ? '/' + t.relayProtocol : ''} ${t.localAddress} → ${t.remoteAddress}`, JSON.stringify(heard));
  const figures = await measure(alice, 10);
  log(`${relay}: ${JSON.stringify(figures)}`);
  return { t, figures };
}

async function main() {
  const bob = await client('bob', 240, '/usr/bin/chromium');
  const alice = await client('alice', 180, process.env.CHROMIUM_B);

  await bob.page.fill('#new-guild-name', 'Behind a firewall');
  await bob.page.click('#new-guild button');
  await bob.page.waitForSelector('#guild-list li.active');
  await bob.page.click('#invite-btn');
  await bob.page.waitForFunction(() => document.getElementById('invite-out').dataset.code);
  const code = await bob.page.getAttribute('#invite-out', 'data-code');
  await alice.page.fill('#invite-code', code);
  await alice.page.click('#join-invite button');
  await alice.page.waitForSelector('#guild-list li.active');

  await joinVoice(bob);
  await bob.page.waitForSelector('#voice-status[data-state="connected"]', { timeout: 30000 });
  log('bob connected (same namespace as the node)');

  const figures = {};

  // 1. Direct: no firewall yet.
  const direct = await phase(alice, bob, 'none');
  assert.equal(direct.t.localType, 'host', `direct path expected: ${JSON.stringify(direct.t)}`);
  figures.direct = direct.figures;
  // The node handed out both relays with a credential of coturn's scheme.
  const given = await alice.page.evaluate(() => window.__given);
  assert.equal(given.length, 1, JSON.stringify(given));
  assert.deepEqual(given[0].urls, ['turn:10.77.0.1:3478?transport=tcp', 'turns:10.77.0.1:5349?transport=tcp']);
  assert.match(given[0].username, new RegExp(`^\\d{10}:${alice.id}$`));
  assert.ok(given[0].credential.length === 28, JSON.stringify(given));
  await leave(alice);

  // 2. Firewall up, no relay: alice must get nothing.
  execFileSync(process.env.FIREWALL_UP);
  const before = drops();
  const bobBefore = await settled(bob);
  await alice.page.evaluate(() => { window.__relay = 'none'; });
  await joinVoice(alice);
  let connected = false;
  let got = 0;
  for (let i = 0; i < 24; i++) {
    await sleep(500);
    connected ||= await alice.page.evaluate(() => document.getElementById('voice-status').dataset.state === 'connected');
    const s = await slot(alice, bob).catch(() => null);
    got = Math.max(got, s ? s.packetsReceived : 0);
  }
  const dropped = drops() - before;
  const bobAfter = await received(bob);
  const bobGot = [...bobAfter].reduce((n, [ssrc, p]) => n + p - (bobBefore.get(ssrc) || 0), 0);
  log(`blocked: connected=${connected}, packets alice got=${got}, packets bob got=${bobGot}, UDP packets dropped by the firewall=${dropped}`);
  assert.ok(!connected && got === 0 && bobGot === 0, 'with UDP blocked and no relay, media must not flow');
  assert.ok(dropped > 0, 'the firewall dropped nothing: the blocked phase proved nothing');
  await alice.page.evaluate(() => window.lodge.state.voice && document.getElementById('leave-btn').click());
  await alice.page.waitForFunction(() => !window.lodge.state.voice, null, { timeout: 15000 });
  await sleep(500);

  // 3. and 4. The same firewall, through coturn over TCP, then over TLS.
  for (const [relay, proto] of [['tcp', 'tcp'], ['tls', 'tls']]) {
    const r = await phase(alice, bob, relay);
    assert.equal(r.t.localType, 'relay', `${relay}: expected a relayed path: ${JSON.stringify(r.t)}`);
    assert.equal(r.t.relayProtocol, proto, `${relay}: the relay was reached over ${r.t.relayProtocol}`);
    assert.ok(r.t.localAddress.startsWith('10.77.1.1:'), `the relay address is coturn's relay-ip: ${r.t.localAddress}`);
    figures[relay] = r.figures;
    await leave(alice);
    await sleep(500);
  }

  writeFileSync(process.env.FIGURES, JSON.stringify(figures, null, 2));
  log('figures', JSON.stringify(figures));
  await alice.ctx.close();
  await bob.ctx.close();
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
