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
