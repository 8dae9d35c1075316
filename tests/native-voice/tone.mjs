// A sine tone as 20 ms stereo Opus packets (opusscript's encoder), and the tone detector: a
// Goertzel scan that finds the strongest frequency of decoded PCM.
import OpusScript from 'opusscript';

export const RATE = 48000;
export const CHANNELS = 2;
export const FRAME = 960; // 20 ms at 48 kHz

/** `seconds` of a `freq` Hz sine at `amp` (0..1), encoded as Opus packets of 20 ms each. */
export function opusTone(freq, seconds, amp = 0.3) {
  const enc = new OpusScript(RATE, CHANNELS, OpusScript.Application.AUDIO);
  const packets = [];
  const frames = Math.round((seconds * RATE) / FRAME);
  let n = 0;
  for (let f = 0; f < frames; f++) {
    const pcm = Buffer.alloc(FRAME * CHANNELS * 2);
    for (let i = 0; i < FRAME; i++, n++) {
      const v = Math.round(amp * 32767 * Math.sin((2 * Math.PI * freq * n) / RATE));
      pcm.writeInt16LE(v, (i * CHANNELS) * 2);
      pcm.writeInt16LE(v, (i * CHANNELS + 1) * 2);
    }
    packets.push(Buffer.from(enc.encode(pcm, FRAME)));
  }
  enc.delete();
  return packets;
}

/** An Opus decoder that turns packets into mono (left channel) float samples. */
export function monoDecoder() {
  const dec = new OpusScript(RATE, CHANNELS, OpusScript.Application.AUDIO);
  return {
    decode(packet) {
      const pcm = dec.decode(packet);
      const out = new Float32Array(pcm.length / (2 * CHANNELS));
      for (let i = 0; i < out.length; i++) out[i] = pcm.readInt16LE(i * CHANNELS * 2) / 32768;
      return out;
    },
    delete() { dec.delete(); },
  };
}

/** Goertzel power of `freq` in `x` (normalised by length). */
export function goertzel(x, freq) {
  const w = (2 * Math.PI * freq) / RATE;
  const c = 2 * Math.cos(w);
  let s1 = 0, s2 = 0;
  for (let i = 0; i < x.length; i++) {
    const s0 = x[i] + c * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  return (s1 * s1 + s2 * s2 - c * s1 * s2) / (x.length * x.length);
}

/** The strongest frequency between lo and hi Hz (step Hz apart), its power and the signal RMS. */
export function peak(x, lo = 100, hi = 2000, step = 2) {
  let best = { freq: 0, power: -1 };
  for (let f = lo; f <= hi; f += step) {
    const p = goertzel(x, f);
    if (p > best.power) best = { freq: f, power: p };
  }
  let e = 0;
  for (const v of x) e += v * v;
  return { ...best, rms: Math.sqrt(e / x.length) };
}
