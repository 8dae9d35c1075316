// Driven by tests/ice-tcp/run.sh (it builds the namespaces, the firewall and the node). Bob (on
// the node's side) and alice (behind the firewall) join one voice channel with the web client;
// alice joins in three phases:
//   udp       no firewall                          → media over UDP (host candidates; the baseline)
//   stripped  firewall up, node's TCP candidate    → no media (the firewall really blocks UDP, and
//             removed from the answer by the page     nothing but that candidate gets through)
//   tcp       firewall up, the answer as sent      → media over ICE-TCP to the node's media port
// No TURN relay is configured: the node sends no ice_servers.

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
// The node runs MEDIA_WORKERS media workers on ports 50000.. (one each); the call's room is on
// one of them, named in the answer's candidates.
const NODE_HOST = new URL(BASE).hostname;
const MEDIA_PORTS = Array.from({ length: Number(process.env.MEDIA_WORKERS || 1) }, (_, i) => 50000 + i);
let NODE_MEDIA = null;
const work = mkdtempSync(join(tmpdir(), 'lodge-icetcp-'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...a);
const drops = () => Number(execFileSync(process.env.FIREWALL_DROPS).toString().trim());

// With window.__stripTcp set, the node's TCP candidates are removed from the answer before
// Chromium sees it; the answers as received are kept to check what the node sent, and the
// ice servers the page was given.
const STRIP = () => {
  const set = RTCPeerConnection.prototype.setRemoteDescription;
  window.__answers = [];
  RTCPeerConnection.prototype.setRemoteDescription = function (desc, ...rest) {
    if (desc && desc.sdp) {
      window.__answers.push(desc.sdp);
      if (window.__stripTcp) {
        const sdp = desc.sdp.split('\r\n').filter((l) => !(l.startsWith('a=candidate:') && / tcp /i.test(l))).join('\r\n');
        desc = { type: desc.type, sdp };
      }
    }
    return set.call(this, desc, ...rest);
  };
  const Native = window.RTCPeerConnection;
  function Watched(cfg = {}, ...rest) {
    window.__given = cfg.iceServers || [];
    return new Native(cfg, ...rest);
  }
  Watched.prototype = Native.prototype;
  window.RTCPeerConnection = Watched;
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
    ],
  });
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('console', (m) => { if (m.type() === 'error') log(`${name} console:`, m.text()); });
  page.on('pageerror', (e) => log(`${name} page error:`, e.message));
  await page.addInitScript(STRIP);
  await page.goto(BASE);
  await page.fill('#username', name);
  await page.fill('#password', `password-${name}`);
  await page.click('#register-btn');
  await page.waitForFunction(() => window.lodge && window.lodge.state.user, null, { timeout: 15000 });
  const id = await page.evaluate(() => window.lodge.state.user.id);
  log(`${name} registered as ${id}`);
  return { name, ctx, page, id };
}

// The candidate pair alice's call uses, and the figures that say what it costs.
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
    localProtocol: local && local.protocol,
    remoteType: remote && remote.candidateType,
    remoteProtocol: remote && remote.protocol,
    remoteTcpType: remote && remote.tcpType,
    remoteAddress: remote && `${remote.address}:${remote.port}`,
    inbound,
  };
});

const slot = async (c, other) => (await c.page.evaluate(() => window.lodge.slotStats())).find((x) => x.user === other.id);
const joinVoice = (c) => c.page.click('#channel-list li[data-type="2"]');
async function leave(c) {
  await c.page.click('#leave-btn');
  await c.page.waitForFunction(() => !window.lodge.state.voice, null, { timeout: 5000 });
}
const received = async (c) => new Map((await c.page.evaluate(() => window.lodge.slotStats())).map((x) => [x.ssrc, x.packetsReceived]));

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

// Median and max of per-second samples over `seconds`: RTT of the selected pair (STUN), RTCP
// RTT, and the jitter buffer's mean delay over each second.
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

async function phase(alice, bob, name, seconds) {
  const base = await received(bob);
  await joinVoice(alice);
  await alice.page.waitForSelector('#voice-status[data-state="connected"]', { timeout: 20000 });
  const heard = await hearEachOther(alice, bob, base);
  const t = await transport(alice);
  log(`${name}: connected via ${t.localType}/${t.localProtocol} → ${t.remoteType}/${t.remoteProtocol}${t.remoteTcpType ? ' ' + t.remoteTcpType : ''} ${t.remoteAddress}`, JSON.stringify(heard));
  const figures = await measure(alice, seconds);
  log(`${name}: ${JSON.stringify(figures)}`);
  return { t, figures };
}

async function main() {
  const bob = await client('bob', 240, '/usr/bin/chromium');
  const alice = await client('alice', 180, process.env.CHROMIUM_B);

  await bob.page.fill('#new-guild-name', 'UDP blocked');
  await bob.page.click('#new-guild button');
  await bob.page.waitForSelector('#guild-list li.active');
  await bob.page.click('#invite-btn');
  await bob.page.waitForFunction(() => document.getElementById('invite-out').dataset.code);
  const code = await bob.page.getAttribute('#invite-out', 'data-code');
  await alice.page.fill('#invite-code', code);
  await alice.page.click('#join-invite button');
  await alice.page.waitForSelector('#guild-list li.active');

  await joinVoice(bob);
  await bob.page.waitForSelector('#voice-status[data-state="connected"]', { timeout: 20000 });
  log('bob connected (same namespace as the node)');
  const figures = {};

  // 1. No firewall: UDP, the node's first candidate.
  const udp = await phase(alice, bob, 'udp', 6);
  assert.equal(udp.t.remoteProtocol, 'udp', `UDP expected while it works: ${JSON.stringify(udp.t)}`);
  figures.udp = udp.figures;
  // What the node answered: its UDP and passive TCP host candidates on the media port of the
  // worker that runs the room, UDP first by priority; and no relay to fall back on.
  const answer = (await alice.page.evaluate(() => window.__answers)).at(-1);
  const cands = answer.split('\r\n').filter((l) => l.startsWith('a=candidate:'));
  const tcp = cands.find((l) => / tcp /i.test(l));
  const udpC = cands.find((l) => / udp /i.test(l));
  const port = Number(udpC.split(' ')[5]);
  assert.ok(MEDIA_PORTS.includes(port), `the answer names port ${port}, not a media worker's (${MEDIA_PORTS})`);
  NODE_MEDIA = `${NODE_HOST}:${port}`;
  assert.equal(udp.t.remoteAddress, NODE_MEDIA);
  assert.ok(tcp && tcp.includes(`${NODE_MEDIA.replace(':', ' ')} typ host tcptype passive`), cands.join('\n'));
  assert.ok(Number(udpC.split(' ')[3]) > Number(tcp.split(' ')[3]), `UDP must outrank TCP:\n${cands.join('\n')}`);
  assert.deepEqual(await alice.page.evaluate(() => window.__given), [], 'no TURN relay configured');
  await leave(alice);

  // 2. Firewall up, the node's TCP candidate stripped: alice must get nothing.
  execFileSync(process.env.FIREWALL_UP);
  const before = drops();
  const bobBefore = await received(bob);
  await alice.page.evaluate(() => { window.__stripTcp = true; });
  await joinVoice(alice);
  let connected = false;
  let got = 0;
  for (let i = 0; i < 16; i++) {
    await sleep(500);
    connected ||= await alice.page.evaluate(() => document.getElementById('voice-status').dataset.state === 'connected');
    const s = await slot(alice, bob).catch(() => null);
    got = Math.max(got, s ? s.packetsReceived : 0);
  }
  const dropped = drops() - before;
  const bobAfter = await received(bob);
  const bobGot = [...bobAfter].reduce((n, [ssrc, p]) => n + p - (bobBefore.get(ssrc) || 0), 0);
  log(`stripped: connected=${connected}, packets alice got=${got}, packets bob got=${bobGot}, UDP packets dropped by the firewall=${dropped}`);
  assert.ok(!connected && got === 0 && bobGot === 0, 'with UDP blocked and no TCP candidate, media must not flow');
  assert.ok(dropped > 0, 'the firewall dropped nothing: the stripped phase proved nothing');
  await alice.page.evaluate(() => window.lodge.state.voice && document.getElementById('leave-btn').click());
  await alice.page.waitForFunction(() => !window.lodge.state.voice, null, { timeout: 15000 });
  await sleep(500);

  // 3. The same firewall, the answer as the node sent it: ICE-TCP to the media port.
  await alice.page.evaluate(() => { window.__stripTcp = false; });
  const droppedBefore = drops();
  const r = await phase(alice, bob, 'tcp', 6);
  assert.equal(r.t.localProtocol, 'tcp', JSON.stringify(r.t));
  assert.equal(r.t.remoteProtocol, 'tcp', JSON.stringify(r.t));
  assert.equal(r.t.remoteType, 'host', JSON.stringify(r.t));
  assert.equal(r.t.remoteAddress, NODE_MEDIA, 'straight to the node, no relay');
  figures.tcp = r.figures;
  figures.udp_dropped_during_tcp_phase = drops() - droppedBefore;
  await leave(alice);

  writeFileSync(process.env.FIGURES, JSON.stringify(figures, null, 2));
  log('figures', JSON.stringify(figures));
  await alice.ctx.close();
  await bob.ctx.close();
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
