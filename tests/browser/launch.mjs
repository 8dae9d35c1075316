// How the voice tests start Chromium: headless, loopback WebRTC allowed, a fake microphone that
// plays `wav` (see wav.mjs) and no permission prompt.
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export function launchVoiceBrowser(profileDir, wav) {
  return chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: false,
    args: [
      '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--allow-loopback-in-peer-connection', '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream', '--autoplay-policy=no-user-gesture-required',
      `--use-file-for-fake-audio-capture=${wav}`,
    ],
  });
}

// Register `name` in the web client at `base`, join the guild of `invite` and its voice
// channel (`query`, e.g. "?slots=2", goes on the page URL); the user id once voice is connected.
export async function joinVoiceChannel(page, base, name, invite, query = '') {
  await page.goto(`${base}/${query}`);
  await page.fill('#username', name);
  await page.fill('#password', `password-${name}`);
  await page.click('#register-btn');
  await page.waitForFunction(() => window.lodge && window.lodge.state.user, null, { timeout: 20000 });
  const id = await page.evaluate(() => window.lodge.state.user.id);
  await page.fill('#invite-code', invite);
  await page.click('#join-invite button');
  await page.waitForSelector('#guild-list li.active', { timeout: 20000 });
  await page.click('#channel-list li[data-type="2"]');
  await page.waitForSelector('#voice-status[data-state="connected"]', { timeout: 30000 });
  return id;
}

// In the page (`page.evaluate(hearing, freqs)`): per slot, the speaker op 5 names, packets so far, and the share of the slot's
// last 8192 samples (WebAudio, after the jitter buffer and decoder) at each of `freqs`.
export function hearing(freqs) {
  const v = window.lodge.state.voice;
  const m = (window.__mixed ||= { ctx: new AudioContext(), analysers: new Map() });
  if (m.ctx.state !== 'running') m.ctx.resume();
  const share = (x, hz) => {
    const coeff = 2 * Math.cos((2 * Math.PI * hz) / m.ctx.sampleRate);
    let s1 = 0, s2 = 0, energy = 0;
    for (const s of x) { const s0 = s + coeff * s1 - s2; s2 = s1; s1 = s0; energy += s * s; }
    return energy > 0 ? (s1 * s1 + s2 * s2 - coeff * s1 * s2) / ((energy * x.length) / 2) : 0;
  };
  return window.lodge.slotStats().then((slots) => slots.map((s) => {
    let an = m.analysers.get(s.mid);
    if (!an) {
      const tr = v.pc.getTransceivers().find((t) => t.mid === s.mid);
      an = m.ctx.createAnalyser();
      an.fftSize = 8192;
      m.ctx.createMediaStreamSource(new MediaStream([tr.receiver.track])).connect(an);
      m.analysers.set(s.mid, an);
    }
    const x = new Float32Array(an.fftSize);
    an.getFloatTimeDomainData(x);
    const rms = Math.sqrt(x.reduce((a, s) => a + s * s, 0) / x.length);
    return { ...s, rms, shares: Object.fromEntries(freqs.map((f) => [f, share(x, f)])) };
  }));
}
