// The web page in real headless Chromium (Debian's chromium, driven by playwright-core; no browser
// is downloaded): the status view beside the chat shows what the store holds, and a chat round
// trip works from the page. The browser tier: NANOCLAW_TEST_BROWSER=1.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { openDb } from '../src/db.js';
import { taskStore } from '../src/scheduler.js';
import { removeHome, startApp, type TestApp, tempHome } from './support/app.js';
import { type FakeAnthropic, startFakeAnthropic, text } from './support/fake-anthropic.js';

const TOKEN = 'page-token';
const HOUR = 3_600_000;

if (process.env.NANOCLAW_TEST_BROWSER === '1') {
  describe('the web page in Chromium', () => {
    let fake: FakeAnthropic;
    let app: TestApp;
    let browser: Browser;
    const now = Date.now();
    const nextRun = now + 3 * 24 * HOUR; // never due while the test runs
    const seeded = { task: '', later: '', long: 0, short: 0 };

    before(async () => {
      fake = await startFakeAnthropic();
      const home = tempHome();
      const db = openDb(path.join(home, 'store', 'messages.db'));
      db.addGroup(
        {
          jid: 'discord:42',
          name: 'Family',
          folder: 'family',
          trigger: '@Krabby',
          requiresTrigger: true,
          isMain: false,
        },
        now,
      );
      seeded.task = taskStore(db).create(
        {
          groupFolder: 'family',
          chatJid: 'discord:42',
          prompt: 'remind everyone to water the plants',
          schedule: { type: 'cron', value: '0 9 * * *' },
          timezone: 'Europe/Berlin',
          contextMode: 'group',
          nextRun,
        },
        now,
      ).id;
      seeded.long = db.startRun('family', 'discord:42', now - 2 * HOUR);
      db.finishRun(seeded.long, {
        now: now - 2 * HOUR + 83_400,
        status: 'ok',
        inputTokens: 12_345,
        outputTokens: 678,
        costUsd: 0.0421,
      });
      db.close();
      const script = fake.script('page', [{ reply: text('Hello from the fake model') }]);
      app = await startApp({ home, baseUrl: script.baseUrl, env: { WEB_TOKEN: TOKEN } });
      // And through the running orchestrator's store: a failed run and a second task.
      seeded.short = app.orch.db.startRun('family', 'discord:42', now - HOUR);
      app.orch.db.finishRun(seeded.short, {
        now: now - HOUR + 1500,
        status: 'error',
        inputTokens: 900,
        outputTokens: 45,
        costUsd: 0.0035,
        error: 'model overloaded',
      });
      seeded.later = taskStore(app.orch.db).create(
        {
          groupFolder: 'main',
          chatJid: 'web:main',
          prompt: 'summarize the week',
          schedule: { type: 'interval', value: 7 * 24 * HOUR },
          timezone: 'UTC',
          contextMode: 'isolated',
          nextRun: nextRun + HOUR,
        },
        now,
      ).id;
      browser = await chromium.launch({
        executablePath: '/usr/bin/chromium',
        args: [
          '--headless',
          '--no-sandbox',
          '--disable-gpu',
          '--disable-background-networking',
          '--disable-component-update',
          '--no-first-run',
        ],
      });
    });
    after(async () => {
      await browser?.close();
      await app?.stop();
      if (app) removeHome(app.home);
      await fake?.close();
    });

    /** A fresh page on the app (token in the address, as the owner opens it); records page errors. */
    async function open(viewport: { width: number; height: number }) {
      const context: BrowserContext = await browser.newContext({
        viewport,
        locale: 'en-US',
        timezoneId: 'UTC',
      });
      const page: Page = await context.newPage();
      const problems: string[] = [];
      page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
      // Every console error counts, Chromium's own /favicon.ico request (sent without the token) too.
      page.on('console', (m) => {
        if (m.type() === 'error') problems.push(`${m.text()} (${m.location().url})`);
      });
      await page.goto(`http://127.0.0.1:${app.port}/?token=${TOKEN}`);
      return { context, page, problems };
    }

    const textOf = async (page: Page, selector: string) =>
      ((await page.locator(selector).textContent({ timeout: 10_000 })) ?? '').trim();

    test('on a phone the status view replaces the chat and shows groups, tasks and runs', async () => {
      const { context, page, problems } = await open({ width: 390, height: 844 });
      try {
        assert.equal(await page.locator('#status').isVisible(), false);
        await page.click('#tab');
        await page.locator('#st-groups li[data-chat="discord:42"]').waitFor({ timeout: 10_000 });
        assert.equal(await page.locator('main').isVisible(), false, 'the chat gives way on a narrow screen');
        assert.equal(await page.locator('#status').isVisible(), true);

        const groups = await page.locator('#st-groups li').allTextContents();
        assert.deepEqual(groups, [
          'Web chatweb:main · groups/main · main',
          'Familydiscord:42 · groups/family · trigger @Krabby',
        ]);

        const task = page.locator(`#st-tasks li[data-task="${seeded.task}"]`);
        assert.match((await task.textContent()) ?? '', /^remind everyone to water the plants/);
        assert.match(
          (await task.locator('.sub').textContent()) ?? '',
          new RegExp(`^${seeded.task} · family · next `),
        );
        assert.equal(await task.locator('time').getAttribute('datetime'), new Date(nextRun).toISOString());
        const later = page.locator(`#st-tasks li[data-task="${seeded.later}"] time`);
        assert.equal(await later.getAttribute('datetime'), new Date(nextRun + HOUR).toISOString());
        assert.deepEqual(
          await page
            .locator('#st-tasks li')
            .evaluateAll((lis) => lis.map((li) => li.getAttribute('data-task'))),
          [seeded.task, seeded.later],
          'tasks in the order they run',
        );

        const long = `#st-runs li[data-run="${seeded.long}"]`;
        assert.equal(await textOf(page, `${long} > div:first-child`), 'Family');
        assert.equal(await textOf(page, `${long} .dur`), '1 min 23 s');
        assert.equal(await textOf(page, `${long} .tok`), '12,345 in / 678 out tokens');
        assert.equal(await textOf(page, `${long} .cost`), '$0.0421');
        assert.match(await textOf(page, `${long} .sub`), /^ok · started /);
        const short = `#st-runs li[data-run="${seeded.short}"]`;
        assert.equal(await textOf(page, `${short} .dur`), '1.5 s');
        assert.equal(await textOf(page, `${short} .tok`), '900 in / 45 out tokens');
        assert.equal(await textOf(page, `${short} .cost`), '$0.0035');
        assert.equal(await textOf(page, `${short} .err`), 'model overloaded');
        assert.equal(await textOf(page, '#st-agents li'), 'No agents running.');

        await page.click('#tab');
        assert.equal(await page.locator('main').isVisible(), true, 'the tab brings the chat back');
        assert.equal(await page.locator('#status').isVisible(), false);
        assert.deepEqual(problems, []);
      } finally {
        await context.close();
      }
    });

    test('a chat round trip works from the page, and its run appears in the open status view', async () => {
      const { context, page, problems } = await open({ width: 1280, height: 800 });
      try {
        await page.click('#tab');
        assert.equal(await page.locator('main').isVisible(), true, 'chat and status side by side');
        assert.equal(await page.locator('#status').isVisible(), true);
        await page.locator('#st-runs li[data-run]').first().waitFor({ timeout: 10_000 });
        assert.equal(await page.locator('#st-runs li', { hasText: 'Web chat' }).count(), 0);

        await page.fill('#input', 'hello from Chromium');
        await page.press('#input', 'Enter');
        await page
          .locator('.msg.user .text', { hasText: 'hello from Chromium' })
          .waitFor({ timeout: 10_000 });
        await page
          .locator('.msg.assistant .text', { hasText: 'Hello from the fake model' })
          .waitFor({ timeout: 60_000 });
        // The status view refreshes itself while open: the chat's run shows up without a reload.
        const run = page.locator('#st-runs li', { hasText: 'Web chat' }).filter({ hasText: /^Web chatok ·/ });
        await run.waitFor({ timeout: 60_000 });
        assert.match((await run.locator('.tok').textContent()) ?? '', /^[\d,]+ in \/ [\d,]+ out tokens$/);
        assert.match((await run.locator('.cost').textContent()) ?? '', /^\$\d+\.\d{4}$/);
        assert.equal(await page.locator('.msg.assistant').count(), 1);
        assert.deepEqual(problems, []);
      } finally {
        await context.close();
      }
    });
  });
} else if (process.env.CI === 'true') {
  throw new Error('CI=true needs the browser tier: NANOCLAW_TEST_BROWSER=1 (chromium + playwright-core)');
}
