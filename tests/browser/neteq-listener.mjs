// The Chromium half of the NetEq comparison (tests/neteq/run.sh): one headless web client that
// registers, joins the guild of INVITE and its voice channel, mutes itself, and listens, with
// its media path through RELAY (an impairment proxy in front of the node: the node's ICE
// candidates in the answer are rewritten to it, TCP candidates dropped). On SIGUSR2 (or after
// MAX_S seconds) it reports what Chromium's NetEq did — the inbound-rtp audio figures summed
// over the slots that received packets — and leaves.
//
// Input (environment): LODGE_URL, INVITE, RELAY (ip:port), NAME, MAX_S (default 600).
// Output: lines `@@ {json}` on stdout (`joined` with the user id, then `stats`); the rest is log.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeToneWav } from './wav.mjs';
import { joinVoiceChannel, launchVoiceBrowser } from './launch.mjs';

const BASE = process.env.LODGE_URL;
const INVITE = process.env.INVITE;
const [RELAY_IP, RELAY_PORT] = process.env.RELAY.split(':');
const NAME = process.env.NAME || 'neteq';
const MAX_S = Number(process.env.MAX_S || 600);
const work = mkdtempSync(join(tmpdir(), 'lodge-neteq-'));
const log = (...a) => console.error(`[${new Date().toISOString().slice(11, 23)}]`, ...a);
const report = (event, d) => console.log(`@@ ${JSON.stringify({ event, ...d })}`);

const wav = join(work, 'silence.wav');
writeToneWav(wav, 440, 0);
const ctx = await launchVoiceBrowser(join(work, 'profile'), wav);
const page = ctx.pages()[0] || (await ctx.newPage());
page.on('pageerror', (e) => log('page error:', e.message));
// Every remote description goes through the relay: UDP host candidates point at it, TCP ones
// are dropped (they would bypass it).
await page.addInitScript(({ ip, port }) => {
  const orig = RTCPeerConnection.prototype.setRemoteDescription;
  RTCPeerConnection.prototype.setRemoteDescription = function (desc) {
    if (desc && desc.sdp) {
      const sdp = desc.sdp
        .split('\r\n')
        .filter((l) => !(l.startsWith('a=candidate:') && / tcp /i.test(l)))
        .map((l) => (l.startsWith('a=candidate:') ? l.replace(/^(a=candidate:\S+ \d+ udp \d+ )(\S+) (\d+)/i, `$1${ip} ${port}`) : l))
        .join('\r\n');
      desc = { type: desc.type, sdp };
    }
    return orig.call(this, desc);
  };
}, { ip: RELAY_IP, port: Number(RELAY_PORT) });

const id = await joinVoiceChannel(page, BASE, NAME, INVITE);
await page.click('#mute-btn');
log(`${NAME} (${id}) listening through the relay at ${RELAY_IP}:${RELAY_PORT}`);
report('joined', { id });

// What NetEq did: inbound-rtp audio figures, summed over the slots that got packets.
async function stats() {
  return page.evaluate(async () => {
    const keys = ['packetsReceived', 'packetsLost', 'packetsDiscarded', 'fecPacketsReceived', 'jitterBufferDelay',
      'jitterBufferTargetDelay', 'jitterBufferEmittedCount', 'totalSamplesReceived', 'concealedSamples',
      'silentConcealedSamples', 'concealmentEvents', 'insertedSamplesForDeceleration', 'removedSamplesForAcceleration'];
    const sum = Object.fromEntries(keys.map((k) => [k, 0]));
    let streams = 0;
    for (const tr of window.lodge.state.voice.pc.getTransceivers()) {
      if (tr.direction !== 'recvonly') continue;
      const r = await tr.receiver.getStats();
      r.forEach((s) => {
        if (s.type !== 'inbound-rtp' || s.kind !== 'audio' || !s.packetsReceived) return;
        streams += 1;
        for (const k of keys) sum[k] += s[k] || 0;
      });
    }
    return { streams, ...sum };
  });
}

let done = false;
async function finish(why) {
  if (done) return;
  done = true;
  try {
    report('stats', { why, ...(await stats()) });
  } catch (e) {
    log('collecting stats failed:', e.message);
  }
  await ctx.close().catch(() => {});
  rmSync(work, { recursive: true, force: true });
  process.exit(0);
}
// SIGUSR2: playwright closes the browser on SIGINT and SIGTERM itself, before we could read it.
process.on('SIGUSR2', () => finish('stopped'));
setTimeout(() => finish('max time'), MAX_S * 1000);
