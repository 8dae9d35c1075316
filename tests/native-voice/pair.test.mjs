// Two unmodified discord.js 14 bots with @discordjs/voice 0.19 join a Lodge voice channel over
// Discord's native voice transport (UDP mode), with DAVE off (`daveEncryption: false`, so the
// call runs at DAVE protocol version 0) or, with DAVE=1, on (the library's default with
// @snazzah/davey: Lodge coordinates the MLS group and forwards end-to-end encrypted frames it
// cannot read). Bot A plays an Opus tone; bot B subscribes to A with
// `connection.receiver.subscribe(A)`, decodes it with opusscript and the test finds the tone's
// frequency with a Goertzel scan.
//
// Asserts: both bots log in through discord.js (REST + gateway against Lodge); both voice
// connections reach VoiceConnectionStatus.Ready and stay there; Identify carries
// max_dave_protocol_version 0 (DAVE=1: 1), Select Protocol is `udp` with the expected mode, op 4
// answers that mode with dave_protocol_version 0 (DAVE=1: 1) and a 32-byte key; with DAVE=1 both
// connections reach the same voice privacy code (the MLS epoch authenticator) before A plays,
// and Lodge counts A's voice as DAVE frames; B learns A's SSRC from op 5; B decodes 1 s
// of A's audio within 10 s and its strongest frequency (100..2000 Hz, 2 Hz steps) is the tone's
// (±4 Hz) and stands > 100x above 0.5/0.75/1.25/1.5/2x the tone; Lodge's /voice/stats shows the
// IP discoveries, A in B's slot under A's SSRC and no AEAD or replay drops; nothing emits an
// error or throws. HOLD=1 adds: every tone packet reaches B, and one voice heartbeat round
// (op 3 with seq_ack = the last seq, op 6 echoing t) on both connections.
//
// LODGE_VOICE=<path of lodge-voice> (with DAVE=1) adds a third member: Lodge's own client,
// lodge-client through its CLI, over WSS with the test CA (LODGE_CA), playing an 880 Hz tone
// and recording each speaker. Then all three reach one privacy code (one MLS group of three: the
// bots' @snazzah/davey and lodge-client's davey), B decodes lodge-voice's tone as well as A's,
// lodge-voice decrypts A's frames (its stats: in the group, DAVE frames decrypted) and its
// recording of A holds A's tone, and it leaves cleanly.
//
// Env: LODGE_URL (https://localhost:PORT, its CA trusted through NODE_EXTRA_CA_CERTS),
//      TONE_HZ (default 440), RUN (a tag for account names),
//      EXPECT_MODE (the encryption mode the client must pick; default aead_aes256_gcm_rtpsize),
//      FORCE_XCHACHA=1 makes this process report no native AES-256-GCM (node:crypto's
//      getCiphers() without it) before @discordjs/voice loads; the library then supports only
//      aead_xchacha20_poly1305_rtpsize (through @noble/ciphers) and picks it from Lodge's modes.
import crypto from 'node:crypto';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { opusTone, monoDecoder, peak, goertzel, RATE } from './tone.mjs';

const BASE = (process.env.LODGE_URL || 'https://localhost:8443').replace(/\/$/, '');
const TONE = Number(process.env.TONE_HZ || 440);
const RUN = process.env.RUN || String(process.pid);
const EXPECT_MODE = process.env.EXPECT_MODE || 'aead_aes256_gcm_rtpsize';
const DAVE = process.env.DAVE === '1';
const DAVE_VERSION = DAVE ? 1 : 0;
const READY_S = 20; // both connections Ready within this
const TONE_S = 10; // the tone detected at B within this after A starts playing
const ANALYSE_S = 1; // seconds of decoded audio analysed
const LODGE_VOICE = DAVE ? process.env.LODGE_VOICE : undefined;
const THIRD_TONE = 880; // lodge-voice's tone

if (process.env.FORCE_XCHACHA === '1') {
  const real = crypto.getCiphers.bind(crypto);
  crypto.getCiphers = () => real().filter((c) => c !== 'aes-256-gcm');
}
// Loaded after the optional patch above: @discordjs/voice reads getCiphers() when it loads.
const { Client, GatewayIntentBits, Events } = await import('discord.js');
const voice = await import('@discordjs/voice');
const {
  joinVoiceChannel, entersState, VoiceConnectionStatus, createAudioPlayer, createAudioResource,
  StreamType, AudioPlayerStatus, EndBehaviorType, NoSubscriberBehavior,
} = voice;

const errors = [];
const check = (cond, what) => { if (!cond) throw new Error(`check failed: ${what}`); console.log(`ok: ${what}`); };
process.on('uncaughtException', (e) => { errors.push(`uncaught: ${e?.stack || e}`); });
process.on('unhandledRejection', (e) => { errors.push(`unhandled rejection: ${e?.stack || e}`); });

async function rest(method, path, token, body) {
  const r = await fetch(`${BASE}/api/v10${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { authorization: token } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

// --- accounts and a guild through Lodge's REST API (a human owner, two bots invited) ----------
async function setup() {
  const owner = await rest('POST', '/auth/register', null, { username: `owner${RUN}`, password: `password-owner-${RUN}` });
  check(owner.status === 201, `register the guild owner (${owner.status} ${JSON.stringify(owner.body)})`);
  const bots = [];
  for (const name of ['a', 'b']) {
    const r = await rest('POST', '/auth/register', null, { username: `bot${name}${RUN}`, password: `password-bot-${RUN}`, bot: true });
    check(r.status === 201 && r.body.user?.bot !== false, `register bot ${name.toUpperCase()}`);
    bots.push(r.body);
  }
  const guild = await rest('POST', '/guilds', owner.body.token, { name: `Native voice ${RUN}` });
  check(guild.status === 201, 'create a guild');
  const guildId = guild.body.id;
  const textId = guild.body.channels.find((c) => c.type === 0).id;
  const voiceId = guild.body.channels.find((c) => c.type === 2)?.id;
  check(voiceId, 'the guild has a voice channel');
  const inv = await rest('POST', `/channels/${textId}/invites`, owner.body.token, {});
  for (const b of bots) {
    const r = await rest('POST', `/invites/${inv.body.code}`, b.token);
    check(r.status === 200, 'a bot joins by invite');
  }
  let third = null;
  if (LODGE_VOICE) {
    const r = await rest('POST', '/auth/register', null, { username: `human${RUN}`, password: `password-human-${RUN}` });
    check(r.status === 201, 'register the lodge-voice user');
    const j = await rest('POST', `/invites/${inv.body.code}`, r.body.token);
    check(j.status === 200, 'the lodge-voice user joins by invite');
    third = r.body;
  }
  return { owner: owner.body.token, bots, guildId, voiceId, third };
}

// --- two discord.js clients logged into Lodge ------------------------------------------------
const clients = [];
const connections = [];
async function cleanup() {
  for (const c of connections) { try { c.destroy(); } catch { /* already gone */ } }
  for (const c of clients) { try { await c.destroy(); } catch { /* already gone */ } }
}
const deadline = (s, what) => new Promise((_, rej) => setTimeout(() => rej(new Error(`timeout after ${s} s: ${what}`)), s * 1000).unref());

async function login(token) {
  const client = new Client({
    intents: [GatewayIntentBits.Guilds, GatewayIntentBits.GuildVoiceStates],
    rest: { api: `${BASE}/api` },
  });
  client.on(Events.Error, (e) => errors.push(`client error: ${e?.stack || e}`));
  clients.push(client);
  const ready = new Promise((res) => client.once(Events.ClientReady, res));
  await client.login(token);
  await Promise.race([ready, deadline(15, 'discord.js ClientReady')]);
  return client;
}

// What the voice WebSocket carried, read from @discordjs/voice's own debug log.
function observe(conn, tag) {
  const seen = { sent: [], received: [], states: [] };
  conn.on('debug', (m) => {
    const r = /\[WS\] (<<|>>) (\{.*\})$/s.exec(m);
    if (r) {
      try { (r[1] === '<<' ? seen.received : seen.sent).push(JSON.parse(r[2])); } catch { /* not JSON */ }
    }
    if (process.env.VERBOSE) console.log(`[${tag}] ${m.replace(/"secret_key":\[[^\]]*\]/, '"secret_key":[…]')}`);
  });
  conn.on('stateChange', (o, n) => { seen.states.push(n.status); });
  conn.on('error', (e) => errors.push(`${tag} connection error: ${e?.stack || e}`));
  return seen;
}

// lodge-voice as the third member: its output lines are watched for the privacy code it shows
// and for `@@ {json}` answers to the `stats` command.
function startLodgeVoice(token, guildId, voiceId, recordDir) {
  const child = spawn(LODGE_VOICE, [
    '--url', BASE, '--ca-file', process.env.LODGE_CA, '--token', token, '--guild', guildId,
    '--channel', voiceId, '--tone', String(THIRD_TONE), '--stats-every', '1', '--record', recordDir,
    '--commands', '--duration', '90',
  ], { stdio: ['pipe', 'pipe', 'pipe'] });
  const lv = { child, code: undefined, replies: [], exited: null, log: [] };
  lv.exited = new Promise((res) => child.on('exit', (code) => res(code)));
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      lv.log.push(line);
      const m = /privacy code ([0-9 ]+)$/.exec(line);
      if (m) lv.code = m[1].replace(/ /g, '');
      if (line.startsWith('@@ ')) lv.replies.push(JSON.parse(line.slice(3)));
    }
  });
  child.stderr.on('data', (d) => { for (const l of String(d).split('\n')) if (l) lv.log.push(`stderr: ${l}`); });
  return lv;
}

// A 16-bit PCM WAV's samples (lodge-voice records 48 kHz mono), as floats in -1..1.
function readWav(file) {
  const b = fs.readFileSync(file);
  let o = 12;
  while (o + 8 <= b.length) {
    const id = b.toString('ascii', o, o + 4);
    const len = b.readUInt32LE(o + 4);
    if (id === 'data') {
      const n = Math.floor(Math.min(len, b.length - o - 8) / 2);
      const x = new Float32Array(n);
      for (let i = 0; i < n; i++) x[i] = b.readInt16LE(o + 8 + 2 * i) / 32768;
      return x;
    }
    o += 8 + len + (len & 1);
  }
  throw new Error(`${file}: no data chunk`);
}

// The loudest `n` samples of `x` (in steps of 0.1 s).
function loudest(x, n) {
  let best = 0, at = 0;
  for (let i = 0; i + n <= x.length; i += RATE / 10) {
    let e = 0;
    for (let k = i; k < i + n; k++) e += x[k] * x[k];
    if (e > best) { best = e; at = i; }
  }
  return x.subarray(at, at + n);
}

let exitCode = 0;
let lodgeVoice = null;
try {
  const { owner, bots, guildId, voiceId, third } = await setup();
  const [ca, cb] = [await login(bots[0].token), await login(bots[1].token)];
  check(ca.user.id === bots[0].user.id && cb.user.id === bots[1].user.id, 'both bots logged in through discord.js (REST + gateway)');
  const ga = ca.guilds.cache.get(guildId);
  const gb = cb.guilds.cache.get(guildId);
  check(ga && gb, 'both bots see the guild (GUILD_CREATE)');

  const join = (g, group) => joinVoiceChannel({
    channelId: voiceId, guildId, adapterCreator: g.voiceAdapterCreator, group,
    selfDeaf: false, selfMute: false, daveEncryption: DAVE, debug: true,
  });
  const A = join(ga, 'a');
  const B = join(gb, 'b');
  connections.push(A, B);
  const seenA = observe(A, 'A');
  const seenB = observe(B, 'B');
  const t0 = Date.now();
  await Promise.race([
    Promise.all([entersState(A, VoiceConnectionStatus.Ready, READY_S * 1000), entersState(B, VoiceConnectionStatus.Ready, READY_S * 1000)]),
    deadline(READY_S, 'VoiceConnectionStatus.Ready'),
  ]);
  check(true, `both voice connections reach VoiceConnectionStatus.Ready (${Date.now() - t0} ms)`);

  for (const [tag, seen] of [['A', seenA], ['B', seenB]]) {
    const identify = seen.sent.find((p) => p.op === 0);
    check(identify && identify.d.max_dave_protocol_version === DAVE_VERSION, `${tag} identified with max_dave_protocol_version ${identify?.d.max_dave_protocol_version}`);
    const ready = seen.received.find((p) => p.op === 2);
    check(ready && ready.d.modes.includes(EXPECT_MODE) && ready.d.ip === '127.0.0.1', `${tag}: Ready offers ${ready?.d.modes.join(', ')} on ${ready?.d.ip}:${ready?.d.port}`);
    const select = seen.sent.find((p) => p.op === 1);
    check(select && select.d.protocol === 'udp' && select.d.data.mode === EXPECT_MODE, `${tag} selected protocol udp, mode ${select?.d.data.mode}`);
    const sd = seen.received.find((p) => p.op === 4);
    check(sd && sd.d.mode === EXPECT_MODE && sd.d.dave_protocol_version === DAVE_VERSION && sd.d.secret_key.length === 32,
      `${tag}: session description mode ${sd?.d.mode}, dave_protocol_version ${sd?.d.dave_protocol_version}, 32-byte key`);
  }
  const net = B.state.networking?.state;
  check(net?.connectionData?.encryptionMode === EXPECT_MODE, `B's networking runs ${net?.connectionData?.encryptionMode}`);
  const recordDir = LODGE_VOICE ? fs.mkdtempSync(path.join(os.tmpdir(), 'lodge-voice-rec-')) : null;
  if (LODGE_VOICE) lodgeVoice = startLodgeVoice(third.token, guildId, voiceId, recordDir);
  if (DAVE) {
    // The group: every member derives the same epoch authenticator once Lodge's commit/Welcome
    // went through and the transition executed (with lodge-voice: the group of three).
    const t2 = Date.now();
    const together = () => A.voicePrivacyCode && A.voicePrivacyCode === B.voicePrivacyCode
      && (!lodgeVoice || lodgeVoice.code === A.voicePrivacyCode);
    while (!together() && Date.now() - t2 < 20000) {
      await new Promise((r) => setTimeout(r, 100));
    }
    check(A.voicePrivacyCode && A.voicePrivacyCode === B.voicePrivacyCode,
      `A and B share the voice privacy code ${A.voicePrivacyCode} (B: ${B.voicePrivacyCode}) after ${Date.now() - t2} ms`);
    if (lodgeVoice) {
      check(lodgeVoice.code === A.voicePrivacyCode, `lodge-voice (lodge-client) shows the same privacy code: one group of three (${lodgeVoice.code})`);
    }
    const daveOps = (seen) => [...new Set(seen.received.map((m) => m.op).filter((op) => op >= 21))].sort((x, y) => x - y);
    console.log(`   JSON DAVE ops seen: A ${daveOps(seenA).join(',')}; B ${daveOps(seenB).join(',')}`);
    check([seenA, seenB].some((s) => s.received.some((m) => m.op === 22)), 'a transition was executed (op 22)');
  } else {
    check(!net?.dave, 'no DAVE session on B (protocol version 0)');
  }

  // B listens to lodge-voice too: its frames are DAVE frames lodge-client encrypted.
  let thirdHeard = null;
  if (lodgeVoice) {
    const s3 = B.receiver.subscribe(third.user.id, { end: { behavior: EndBehaviorType.Manual } });
    s3.on('error', (e) => errors.push(`B's receive stream of lodge-voice: ${e?.stack || e}`));
    const dec3 = monoDecoder();
    const pcm3 = [];
    let n3 = 0, p3 = 0;
    thirdHeard = new Promise((res) => {
      s3.on('data', (pkt) => {
        p3++;
        if (p3 <= 5 || n3 >= ANALYSE_S * RATE) return;
        const pcm = dec3.decode(pkt);
        pcm3.push(pcm);
        n3 += pcm.length;
        if (n3 >= ANALYSE_S * RATE) { dec3.delete(); res(pcm3); }
      });
    });
  }

  // B listens to A before A starts.
  const stream = B.receiver.subscribe(ca.user.id, { end: { behavior: EndBehaviorType.Manual } });
  stream.on('error', (e) => errors.push(`B's receive stream: ${e?.stack || e}`));
  const dec = monoDecoder();
  const chunks = [];
  let samples = 0, packets = 0, firstAt = 0;
  const need = ANALYSE_S * RATE;
  const skip = 5; // the first packets may carry the encoder's start-up
  const got = new Promise((res) => {
    stream.on('data', (pkt) => {
      packets++;
      if (!firstAt) firstAt = Date.now();
      if (packets <= skip || samples >= need) return;
      const pcm = dec.decode(pkt);
      chunks.push(pcm);
      samples += pcm.length;
      if (samples >= need) res();
    });
  });

  // The node's counters are node-wide (earlier runs used it too): this run's share is the
  // difference. Its report may be up to 1 s old: read the baseline after that.
  await new Promise((r) => setTimeout(r, 1100));
  const daveBefore = (await rest('GET', '/voice/stats', owner)).body?.dave_frames_in ?? 0;
  const player = createAudioPlayer({ behaviors: { noSubscriber: NoSubscriberBehavior.Play } });
  player.on('error', (e) => errors.push(`player error: ${e?.stack || e}`));
  A.subscribe(player);
  const packetsOut = opusTone(TONE, TONE_S + 2);
  player.play(createAudioResource(Readable.from(packetsOut), { inputType: StreamType.Opus }));
  await entersState(player, AudioPlayerStatus.Playing, 5000);
  const t1 = Date.now();
  console.log(`ok: A plays a ${TONE} Hz Opus tone (${packetsOut.length} packets)`);
  await Promise.race([got, deadline(TONE_S, `${ANALYSE_S} s of A's audio at B (got ${packets} packets)`)]);
  check(true, `B received ${packets} packets from A; the first after ${firstAt - t1} ms, ${ANALYSE_S} s decoded after ${Date.now() - t1} ms`);
  dec.delete();

  const x = new Float32Array(samples);
  let o = 0;
  for (const c of chunks) { x.set(c, o); o += c.length; }
  const win = x.subarray(0, need);
  const p = peak(win);
  const others = [0.5, 0.75, 1.25, 1.5, 2].map((k) => goertzel(win, TONE * k));
  const margin = p.power / Math.max(...others);
  console.log(`   decoded: rms ${p.rms.toFixed(3)}, peak ${p.freq} Hz, peak/other-frequency power ${margin.toFixed(0)}x`);
  check(p.rms > 0.05, `B's decoded audio is not silence (rms ${p.rms.toFixed(3)})`);
  check(Math.abs(p.freq - TONE) <= 4, `the strongest frequency at B is ${p.freq} Hz (A plays ${TONE} Hz)`);
  check(margin > 100, `the tone stands ${margin.toFixed(0)}x above 0.5, 0.75, 1.25, 1.5 and 2 times its frequency`);

  // Lodge's side of the call (GET /voice/stats, the owner may view the channel): both bots did
  // IP discovery, B's slot carries A under A's SSRC, and no packet failed AEAD or was replayed.
  const ssrcA = seenA.received.find((m) => m.op === 2).d.ssrc;
  let stats, slot;
  for (let i = 0; i < 30 && !slot; i++) {
    if (i) await new Promise((r) => setTimeout(r, 200));
    stats = (await rest('GET', '/voice/stats', owner)).body;
    slot = stats?.peers?.find((p) => p.user === cb.user.id)?.slots?.find((x) => x.speaker === ca.user.id);
  }
  const drop = (name) => stats?.drops?.find(([n]) => n === name)?.[1];
  check(stats?.native_discovery >= 2, `Lodge answered IP discovery (native_discovery ${stats?.native_discovery})`);
  check(slot && slot.ssrc === ssrcA, `Lodge forwards A in one of B's slots under A's SSRC (${slot?.ssrc})`);
  check(drop('decrypt_failed') === 0 && drop('replayed') === 0, `Lodge dropped no packet as decrypt_failed (${drop('decrypt_failed')}) or replayed (${drop('replayed')})`);
  if (DAVE) {
    const frames = stats.dave_frames_in - daveBefore;
    check(frames >= packets - skip, `Lodge forwarded A's voice as DAVE frames it cannot read (${frames} DAVE frames; B got ${packets} packets)`);
  } else {
    check(stats.dave_frames_in === daveBefore, `no DAVE frames with DAVE off (${stats.dave_frames_in - daveBefore})`);
  }
  if (process.env.HOLD === '1') {
    // The whole tone (every packet A's player sent reaches B), then voice heartbeats: one
    // round of op 3 / op 6 on both connections (Lodge's Hello interval is 13.75 s).
    await Promise.race([entersState(player, AudioPlayerStatus.Idle, (TONE_S + 5) * 1000), deadline(TONE_S + 5, 'the tone to end')]);
    await new Promise((r) => setTimeout(r, 300));
    check(packets >= packetsOut.length - 2, `B received ${packets} packets: the ${packetsOut.length} of the tone A played (then its player's silence frames) (${((Date.now() - t1) / 1000).toFixed(1)} s)`);
    const acked = () => [seenA, seenB].every((s) => s.received.some((m) => m.op === 6));
    const t2 = Date.now();
    while (!acked() && Date.now() - t2 < 20000) await new Promise((r) => setTimeout(r, 200));
    for (const [tag, seen, conn] of [['A', seenA, A], ['B', seenB, B]]) {
      const hb = seen.sent.filter((m) => m.op === 3);
      const ack = seen.received.find((m) => m.op === 6);
      const lastSeq = Math.max(...seen.received.filter((m) => m.seq).map((m) => m.seq));
      check(hb.length > 0 && ack && ack.d.t === hb[0].d.t && conn.ping.ws !== undefined,
        `${tag}: heartbeat ${JSON.stringify(hb[0]?.d)} answered by op 6 ${JSON.stringify(ack?.d)}, ws ping ${conn.ping.ws} ms`);
      check(hb[0].d.seq_ack === lastSeq, `${tag}: the heartbeat's seq_ack ${hb[0].d.seq_ack} is the last seq Lodge sent (${lastSeq})`);
    }
  }
  if (lodgeVoice) {
    // B decoded lodge-client's DAVE frames: its tone.
    const pcm3 = await Promise.race([thirdHeard, deadline(TONE_S, `${ANALYSE_S} s of lodge-voice's audio at B`)]);
    const x3 = new Float32Array(ANALYSE_S * RATE);
    let o3 = 0;
    for (const c of pcm3) { const k = Math.min(c.length, x3.length - o3); x3.set(c.subarray(0, k), o3); o3 += k; }
    const q = peak(x3);
    const m3 = q.power / Math.max(...[0.5, 0.75, 1.25, 1.5, 2].map((k) => goertzel(x3, THIRD_TONE * k)));
    check(q.rms > 0.05 && Math.abs(q.freq - THIRD_TONE) <= 4 && m3 > 100,
      `B decodes lodge-voice's ${THIRD_TONE} Hz tone (peak ${q.freq} Hz, rms ${q.rms.toFixed(3)}, ${m3.toFixed(0)}x above the other frequencies)`);
    // lodge-voice decrypted A's frames: its figures, then its recording of A.
    lodgeVoice.child.stdin.write('stats\n');
    const t3 = Date.now();
    while (!lodgeVoice.replies.length && Date.now() - t3 < 5000) await new Promise((r) => setTimeout(r, 50));
    const st = lodgeVoice.replies[0];
    check(st?.dave?.inGroup && st.dave.protocolVersion === 1, `lodge-voice is in the DAVE group (${JSON.stringify(st?.dave)})`);
    check(st.dave.framesDecrypted > 25 && st.dave.framesEncrypted > 25,
      `lodge-voice decrypted ${st.dave.framesDecrypted} DAVE frames and encrypted ${st.dave.framesEncrypted}`);
    const fromA = st.speakers.find((x) => x.userId === ca.user.id);
    check(fromA && fromA.packetsReceived > 25, `lodge-voice played out A's voice (${fromA?.packetsReceived} packets)`);
    lodgeVoice.child.stdin.write('leave\n');
    const code = await Promise.race([lodgeVoice.exited, deadline(10, 'lodge-voice to leave')]);
    check(code === 0, `lodge-voice left cleanly (exit ${code})`);
    const wav = loudest(readWav(path.join(recordDir, `user-${ca.user.id}.wav`)), RATE);
    const r = peak(wav);
    check(r.rms > 0.05 && Math.abs(r.freq - TONE) <= 4, `lodge-voice's recording of A holds A's ${TONE} Hz tone (peak ${r.freq} Hz, rms ${r.rms.toFixed(3)})`);
  }
  player.stop(true);
  const after = [seenA.states, seenB.states].map((s) => s.slice(s.indexOf(VoiceConnectionStatus.Ready)));
  check(after.every((s) => s.every((st) => st === VoiceConnectionStatus.Ready)), `both connections stayed Ready (A: ${seenA.states.join('→')}; B: ${seenB.states.join('→')})`);
  const codes = seenB.received.filter((m) => m.op === 5 && m.d.user_id === ca.user.id).map((m) => m.d.ssrc);
  check(codes.length > 0 && codes.every((c) => c === ssrcA), `B was told A's SSRC by op 5 (${[...new Set(codes)].join(', ')}; A's Ready said ${ssrcA})`);
} catch (e) {
  errors.push(`test: ${e?.stack || e}`);
}
if (lodgeVoice && (errors.length || lodgeVoice.child.exitCode !== 0)) {
  console.log('---- lodge-voice output ----');
  for (const l of lodgeVoice.log) console.log(l);
}
if (lodgeVoice && lodgeVoice.child.exitCode === null) lodgeVoice.child.kill();
if (errors.length) {
  for (const e of errors) console.log(`FAIL: ${e}`);
  exitCode = 1;
} else {
  console.log('ok: nothing threw (no errors from clients, connections, player, receive stream)');
}
await cleanup();
process.exit(exitCode);
