// Two real headless Chromium clients use the web client's text chat: live messages, typing,
// replies, reactions, edits, deletes, unread markers, search, history scroll-back, and the
// owner's role and channel-permission editing.
//
// Usage: LODGE_URL=http://127.0.0.1:8080 node chat.test.mjs   (run.sh starts the node)

import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const BASE = process.env.LODGE_URL || 'http://127.0.0.1:8080';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const work = mkdtempSync(join(tmpdir(), 'lodge-chat-'));
const log = (...a) => console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...a);

async function client(name) {
  const ctx = await chromium.launchPersistentContext(join(work, `profile-${name}`), {
    executablePath: CHROMIUM,
    headless: false,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('pageerror', (e) => log(`${name} page error:`, e.message));
  await page.goto(BASE);
  await page.fill('#username', name);
  await page.fill('#password', `password-${name}`);
  await page.click('#register-btn');
  await page.waitForFunction(() => window.lodge && window.lodge.state.user && window.lodge.state.sessionId, null, { timeout: 15000 });
  return { name, ctx, page };
}

const msg = (page, text) => page.locator('.msg', { has: page.locator('.content', { hasText: text }) });

async function main() {
  // Names differ from the voice test's: both tests share one node.
  const alice = await client('ann');
  const bob = await client('ben');
  await alice.page.fill('#new-guild-name', 'Chat Den');
  await alice.page.click('#new-guild button');
  await alice.page.waitForSelector('#guild-list li.active');
  await alice.page.click('#invite-btn');
  await alice.page.waitForFunction(() => document.getElementById('invite-out').dataset.code);
  const code = await alice.page.getAttribute('#invite-out', 'data-code');
  await bob.page.fill('#invite-code', code);
  await bob.page.click('#join-invite button');
  await bob.page.waitForSelector('#guild-list li.active');
  for (const c of [alice, bob]) {
    await c.page.click('#channel-list li[data-type="0"]');
    await c.page.waitForSelector('#composer:not([hidden])');
  }

  // Live message.
  await alice.page.fill('#composer-input', 'hello bob');
  await alice.page.press('#composer-input', 'Enter');
  await msg(bob.page, 'hello bob').waitFor({ timeout: 10000 });
  log('live message delivered');

  // Typing indicator.
  await bob.page.type('#composer-input', 'typing…');
  await alice.page.waitForFunction(() => document.getElementById('typing').textContent.includes('ben is typing'), null, { timeout: 10000 });
  await bob.page.fill('#composer-input', '');
  log('typing indicator shown');

  // Reply.
  await msg(bob.page, 'hello bob').hover();
  await msg(bob.page, 'hello bob').locator('button.reply').click();
  await bob.page.fill('#composer-input', 'hi alice');
  await bob.page.press('#composer-input', 'Enter');
  await alice.page.locator('.msg', { has: alice.page.locator('.reply-ref', { hasText: 'ann: hello bob' }) }).waitFor({ timeout: 10000 });
  log('reply shown with its reference');

  // Reaction.
  await msg(bob.page, 'hello bob').hover();
  await msg(bob.page, 'hello bob').locator('button.react').click();
  await msg(alice.page, 'hello bob').locator('.reactions button', { hasText: '👍 1' }).waitFor({ timeout: 10000 });
  await msg(bob.page, 'hello bob').locator('.reactions button.me').waitFor({ timeout: 10000 });
  log('reaction shown');

  // Edit (through the prompt) and delete.
  alice.page.once('dialog', (d) => d.accept('hello bob, edited'));
  await msg(alice.page, 'hello bob').hover();
  await msg(alice.page, 'hello bob').locator('button.edit').click();
  await bob.page.locator('.msg .content', { hasText: 'hello bob, edited' }).locator('.edited').waitFor({ timeout: 10000 });
  await alice.page.fill('#composer-input', 'to be deleted');
  await alice.page.press('#composer-input', 'Enter');
  await msg(bob.page, 'to be deleted').waitFor();
  await msg(alice.page, 'to be deleted').hover();
  await msg(alice.page, 'to be deleted').locator('button.delete').click();
  await msg(bob.page, 'to be deleted').waitFor({ state: 'detached', timeout: 10000 });
  log('edit and delete propagated');

  // Unread marker on another channel.
  await alice.page.fill('#new-channel-name', 'random');
  await alice.page.selectOption('#new-channel-type', '0');
  await alice.page.click('#new-channel button');
  await bob.page.locator('#channel-list li.channel', { hasText: 'random' }).waitFor();
  await alice.page.locator('#channel-list li.channel', { hasText: 'random' }).click();
  await alice.page.waitForFunction(() => document.getElementById('chat-title').textContent.includes('random'));
  await alice.page.fill('#composer-input', 'over here');
  await alice.page.press('#composer-input', 'Enter');
  await bob.page.locator('#channel-list li.channel', { hasText: 'random' }).locator('.unread', { hasText: '1' }).waitFor({ timeout: 10000 });
  await bob.page.locator('#channel-list li.channel', { hasText: 'random' }).click();
  await msg(bob.page, 'over here').waitFor();
  assert.equal(await bob.page.locator('#channel-list li.channel', { hasText: 'random' }).locator('.unread').count(), 0);
  log('unread marker shown and cleared');

  // Search.
  await bob.page.fill('#search-input', 'edited');
  await bob.page.press('#search-input', 'Enter');
  await bob.page.locator('#search-results', { hasText: '1 result' }).waitFor({ timeout: 10000 });
  await bob.page.locator('#search-results .hit', { hasText: 'hello bob, edited' }).waitFor();
  log('search works');

  // History scroll-back: 70 messages, the view loads 50, scrolling up loads the rest.
  const token = await alice.page.evaluate(() => window.lodge.state.token);
  const randomId = await bob.page.evaluate(() => window.lodge.state.text.channelId);
  for (let i = 0; i < 70; i++) {
    for (;;) {
      const r = await fetch(`${BASE}/api/v10/channels/${randomId}/messages`, { method: 'POST', headers: { Authorization: token, 'Content-Type': 'application/json' }, body: JSON.stringify({ content: `history ${i}` }) });
      if (r.status === 429) { // a well-behaved client waits as told
        const { retry_after } = await r.json();
        await new Promise((res) => setTimeout(res, retry_after * 1000));
        continue;
      }
      assert.equal(r.status, 200);
      break;
    }
  }
  // Bob is in #random: wait until the live dispatches of all 70 have reached his page, so none
  // arrives after the reload below and the first page is exactly what history returned.
  await msg(bob.page, 'history 69').waitFor({ timeout: 20000 });
  await bob.page.locator('#channel-list li.channel[data-type="0"]', { hasText: 'general' }).click();
  await bob.page.locator('#channel-list li.channel', { hasText: 'random' }).click();
  // The switch reloads the view asynchronously: wait for the fresh first page.
  await bob.page.waitForFunction(() => document.querySelectorAll('.msg').length === 50, null, { timeout: 10000 })
    .catch(() => {});
  await msg(bob.page, 'history 69').waitFor();
  assert.equal(await bob.page.locator('.msg').count(), 50, 'first page is 50 messages');
  for (let i = 0; i < 10 && (await bob.page.locator('.msg').count()) < 71; i++) {
    await bob.page.evaluate(() => { const b = document.getElementById('messages'); b.scrollTop = 0; b.dispatchEvent(new Event('scroll')); });
    await bob.page.waitForTimeout(300);
  }
  assert.equal(await bob.page.locator('.msg').count(), 71, 'scrolling back loaded the whole history');
  await msg(bob.page, 'over here').waitFor();
  log('history scroll-back works');

  // Owner tools: a role, and denying SEND_MESSAGES to @everyone in #random.
  await alice.page.click('#owner-tools summary');
  await alice.page.fill('#new-role-name', 'mods');
  await alice.page.check('#new-role-mute');
  await alice.page.click('#new-role button');
  await alice.page.locator('#role-list li', { hasText: 'mods' }).waitFor({ timeout: 10000 });
  await alice.page.click('#perm-toggles button[data-perm="SEND_MESSAGES"]');
  await alice.page.locator('#perm-toggles button[data-perm="SEND_MESSAGES"][aria-pressed="true"]').waitFor({ timeout: 10000 });
  await bob.page.fill('#composer-input', 'can I still talk?');
  await bob.page.press('#composer-input', 'Enter');
  await bob.page.waitForFunction(() => document.getElementById('error').textContent.includes('Missing Permissions'), null, { timeout: 10000 });
  assert.equal(await bob.page.locator('#owner-tools').isHidden(), true, 'non-owners get no settings');
  log('role created; channel permission enforced and explained');

  await alice.ctx.close();
  await bob.ctx.close();
  log('PASS');
}

main().catch((e) => { console.error('FAIL:', e); process.exit(1); });
