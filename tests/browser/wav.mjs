// Test signals for Chromium's fake microphone (--use-file-for-fake-audio-capture), as 16-bit
// mono WAV files. Chromium loops the file, so both signals repeat seamlessly at whole seconds.
import { writeFileSync } from 'node:fs';

// A voice-like signal: a harmonic tone with a syllable-rate envelope, one pitch per client.
export function writeWav(path, f0, seconds = 8, rate = 48000) {
  writeSamples(path, seconds * rate, rate, (t) => {
    const env = 0.55 + 0.45 * Math.sin(2 * Math.PI * 3.5 * t);
    let s = 0;
    for (let h = 1; h <= 5; h++) s += Math.sin(2 * Math.PI * f0 * h * t) / h;
    return 0.35 * env * s;
  });
}

// A steady sine of `hz` (a whole number, so the loop joins without a click) at peak `amp`
// (0..1 of full scale): its RFC 6464 level is about 20·log10(amp/√2) dBov, packet after packet.
export function writeToneWav(path, hz, amp, seconds = 4, rate = 48000) {
  writeSamples(path, seconds * rate, rate, (t) => amp * Math.sin(2 * Math.PI * hz * t));
}

function writeSamples(path, n, rate, signal) {
  const data = Buffer.alloc(n * 2);
  for (let i = 0; i < n; i++) {
    const s = Math.max(-1, Math.min(1, signal(i / rate)));
    data.writeInt16LE(Math.round(s * 32767), i * 2);
  }
  const hdr = Buffer.alloc(44);
  hdr.write('RIFF', 0); hdr.writeUInt32LE(36 + data.length, 4); hdr.write('WAVE', 8);
  hdr.write('fmt ', 12); hdr.writeUInt32LE(16, 16); hdr.writeUInt16LE(1, 20); hdr.writeUInt16LE(1, 22);
  hdr.writeUInt32LE(rate, 24); hdr.writeUInt32LE(rate * 2, 28); hdr.writeUInt16LE(2, 32); hdr.writeUInt16LE(16, 34);
  hdr.write('data', 36); hdr.writeUInt32LE(data.length, 40);
  writeFileSync(path, Buffer.concat([hdr, data]));
}
