// The call half of tests/client-crowd/run.sh (which starts the node and a `lodge-load` crowd in
// the channel): a headless Chromium web client speaking a 660 Hz tone and `lodge-voice`
// (lodge-client, driven through --commands) speaking 440 Hz join the same voice channel as the
// crowd. Checked, in order:
//   1. tones both ways: Chromium's slot for lodge-voice carries 440 Hz (WebAudio after NetEq);
//      lodge-voice plays Chromium and crowd speakers out;
//   2. mute: lodge-voice muted, Chromium gets nothing more from it; unmuted, it does again;
//   3. deafen: lodge-voice deafened, the node sends it nothing; undeafened, it does again;
//   4. a forced network change (`rebind`: a new source port): both directions keep flowing;
//   5. lodge-voice leaves cleanly; its recording of Chromium's track holds 660 Hz.
//
// Input (environment): LODGE_URL, INVITE, TOKEN (lodge-voice's account, already a member),
// GUILD, CHANNEL, VOICE_BIN (the lodge-voice binary), CROWD (JSON [user id]: the crowd's
// speakers), OUT (a directory for lodge-voice's recording and log).
// Output: `@@ {json}` lines (`figures`); the rest is log. Exit 1 on the first failed check.

import { spawn } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { writeToneWav } from './wav.mjs';
import { hearing, joinVoiceChannel, launchVoiceBrowser } from './launch.mjs';

const { LODGE_URL: BASE, INVITE, TOKEN, GUILD, CHANNEL, VOICE_BIN, OUT } = process.env;
const CROWD = JSON.parse(process.env.CROWD || '[]');
const work = mkdtempSync(join(tmpdir(), 'lodge-crowd-'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...a);
const check = (ok, what, detail) => {
  if (!ok) throw new Error(`${what}: ${JSON.stringify(detail)}`);
  log(`ok: ${what}`, JSON.stringify(detail));
};

// lodge-voice as a child: commands on its stdin, answers and `@@` lines from its stdout.
function startVoice() {
  const child = spawn(VOICE_BIN, [
    '--url', BASE, '--token', TOKEN, '--guild', GUILD, '--channel', CHANNEL,
    '--tone', '440', '--record', join(OUT, 'heard'), '--stats-every', '0', '--commands',
  ], { stdio: ['pipe', 'pipe', 'pipe'] });
  const logFile = createWriteStream(join(OUT, 'lodge-voice.log'));
  child.stderr.pipe(logFile);
  const waiting = [];
  let joined;
  const joinedP = new Promise((r) => { joined = r; });
  createInterface({ input: child.stdout }).on('line', (l) => {
    logFile.write(`${l}\n`);
    const m = l.match(/^joined as user (\d+)/);
    if (m) joined(m[1]);
    if ((l.startsWith('ok: ') || l.startsWith('error: ') || l.startsWith('@@ ')) && waiting.length) waiting.shift()(l);
  });
  const exited = new Promise((r) => child.on('exit', (code) => r(code)));
  const send = (cmd) => new Promise((r) => { waiting.push(r); child.stdin.write(`${cmd}\n`); });
  return {
    joined: joinedP,
    exited,
    async cmd(c) {
      const a = await send(c);
      if (!a.startsWith('ok: ')) throw new Error(`lodge-voice answered ${c}: ${a}`);
    },
    async stats() {
      const a = await send('stats');
      return JSON.parse(a.slice(3));
    },
    kill: () => child.kill('SIGKILL'),
  };
}

// Packets Chromium received from `user` over `ms`, and the 440 Hz share of its slot's audio.
async function chromiumHears(page, user, ms) {
  const count = (slots) => new Map(slots.map((s) => [s.ssrc, s]));
  const a = count(await page.evaluate(hearing, [440, 660]));
  await sleep(ms);
  const b = await page.evaluate(hearing, [440, 660]);
  const mine = b.filter((s) => s.user === user);
  return {
    packets: mine.reduce((n, s) => n + s.packetsReceived - (a.get(s.ssrc)?.packetsReceived ?? s.packetsReceived), 0),
    share440: mine.reduce((x, s) => Math.max(x, s.shares[440]), 0),
    others: [...new Set(b.filter((s) => s.user && s.user !== user && s.packetsReceived > (a.get(s.ssrc)?.packetsReceived ?? Infinity)).map((s) => s.user))],
  };
}

// Packets lodge-voice received over `ms`.
async function voiceReceives(v, ms) {
  const a = await v.stats();
  await sleep(ms);
  const b = await v.stats();
  return b.packetsReceived - a.packetsReceived;
}

// Goertzel share of `hz` in 16-bit mono PCM.
function share(pcm, hz, rate = 48000) {
  const k = 2 * Math.cos((2 * Math.PI * hz) / rate);
  let s1 = 0, s2 = 0, e = 0;
  for (const x of pcm) { const s0 = x + k * s1 - s2; s2 = s1; s1 = s0; e += x * x; }
  return e > 0 ? (s1 * s1 + s2 * s2 - k * s1 * s2) / ((e * pcm.length) / 2) : 0;
}

function wavTail(path, seconds) {
  const b = readFileSync(path);
  const data = b.subarray(44);
  const n = Math.floor(data.length / 2);
  const from = Math.max(0, n - seconds * 48000);
  const pcm = new Float64Array(n - from);
  for (let i = from; i < n; i++) pcm[i - from] = data.readInt16LE(i * 2);
  return pcm;
}

async function main() {
  for (const k of ['LODGE_URL', 'INVITE', 'TOKEN', 'GUILD', 'CHANNEL', 'VOICE_BIN', 'OUT']) {
    if (!process.env[k]) throw new Error(`run by tests/client-crowd/run.sh (${k} unset)`);
  }
  const wav = join(work, 'chromium.wav');
  writeToneWav(wav, 660, 0.5);
  const ctx = await launchVoiceBrowser(join(work, 'profile'), wav);
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('pageerror', (e) => log('page error:', e.message));
  const chromium = await joinVoiceChannel(page, BASE, 'chromium', INVITE, '?slots=3');
  log(`chromium (${chromium}) in the call`);
  const v = startVoice();
  const timeout = sleep(30000).then(() => { throw new Error('lodge-voice did not join within 30 s'); });
  const me = await Promise.race([v.joined, timeout]);
  log(`lodge-voice (${me}) in the call`);
  const figures = {};
  try {
    // 1. Tones both ways, with the crowd in the channel.
    let h;
    for (let i = 0; i < 15; i++) {
      h = await chromiumHears(page, me, 1000);
      if (h.packets > 30 && h.share440 > 0.5 && h.others.some((u) => CROWD.includes(u))) break;
    }
    check(h.packets > 30 && h.share440 > 0.5, 'Chromium hears lodge-voice\'s 440 Hz tone', h);
    check(h.others.some((u) => CROWD.includes(u)), 'Chromium hears the crowd too', { others: h.others, crowd: CROWD });
    figures.chromium_hears = h;
    const st = await v.stats();
    const spoke = (u) => st.speakers.find((s) => s.userId === u && s.packetsReceived > 20);
    check(spoke(chromium), 'lodge-voice plays Chromium out', st.speakers.map((s) => [s.userId, s.packetsReceived]));
    check(CROWD.some(spoke), 'lodge-voice plays the crowd\'s speakers out', st.speakers.map((s) => [s.userId, s.packetsReceived]));

    // 2. Mute takes effect at the listener, and unmute undoes it.
    await v.cmd('mute');
    await sleep(1000);
    const muted = await chromiumHears(page, me, 2000);
    check(muted.packets <= 6, 'muted: Chromium gets nothing more from lodge-voice (≤ 5 silence frames)', muted);
    await v.cmd('unmute');
    await sleep(1500);
    const unmuted = await chromiumHears(page, me, 2000);
    check(unmuted.packets > 40, 'unmuted: Chromium hears lodge-voice again', unmuted);

    // 3. Deafen: the node stops sending to a deafened member; undeafen resumes.
    await v.cmd('deaf');
    await sleep(1000);
    const deaf = await voiceReceives(v, 2000);
    check(deaf < 5, 'deafened: lodge-voice receives nothing', { packets: deaf });
    await v.cmd('undeaf');
    await sleep(1000);
    const undeaf = await voiceReceives(v, 2000);
    check(undeaf > 50, 'undeafened: lodge-voice receives again', { packets: undeaf });

    // 4. A forced network change: a new source port, and the call goes on both ways.
    await v.cmd('rebind');
    await sleep(1500);
    const after = await voiceReceives(v, 2000);
    const heardAfter = await chromiumHears(page, me, 2000);
    check(after > 50 && heardAfter.packets > 40, 'after a new source port, media flows both ways', { received: after, chromium: heardAfter });
    figures.after_rebind = { received: after, chromium: heardAfter.packets };
    const fin = await v.stats();
    figures.lodge_voice = { packetsSent: fin.packetsSent, packetsReceived: fin.packetsReceived, targetBitrate: fin.targetBitrate, remoteInbound: fin.remoteInbound };
    check(fin.remoteInbound && fin.remoteInbound.reportsReceived > 3, 'the node answers lodge-voice\'s sender reports', fin.remoteInbound);

    // 5. Leave cleanly; the recording of Chromium's track holds its tone.
    await v.cmd('leave');
    const code = await Promise.race([v.exited, sleep(10000).then(() => 'timeout')]);
    check(code === 0, 'lodge-voice left cleanly', { code });
    const track = wavTail(join(OUT, 'heard', `user-${chromium}.wav`), 1);
    const s660 = share(track, 660);
    check(track.length >= 48000 && s660 > 0.5, 'lodge-voice recorded Chromium\'s 660 Hz tone', { samples: track.length, share660: Number(s660.toFixed(3)) });
    console.log(`@@ ${JSON.stringify({ event: 'figures', ...figures })}`);
  } finally {
    v.kill();
    await ctx.close().catch(() => {});
  }
}

const watchdog = setTimeout(() => { console.error('FAIL: crowd-call.mjs watchdog (120 s)'); process.exit(1); }, 120000);
main()
  .then(() => { clearTimeout(watchdog); rmSync(work, { recursive: true, force: true }); process.exit(0); })
  .catch((e) => { console.error('FAIL:', e.message || e); process.exit(1); });
