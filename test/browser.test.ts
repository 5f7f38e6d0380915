// Browser automation where the image has it (the container tier builds nanoclaw-agent:browser):
// the agent drives Chromium with agent-browser from its Bash tool, inside podman with no network,
// and the page comes through the egress proxy (an injected name and a dial to a local test site).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { eventually, removeHome, startApp } from './support/app.js';
import {
  type FakeAnthropic,
  startFakeAnthropic,
  text,
  toolResult,
  toolUse,
} from './support/fake-anthropic.js';
import { browserImageUnderTest } from './support/runtimes.js';

const image = browserImageUnderTest();
if (image) {
  describe('browser automation in the image with the browser', () => {
    let model: FakeAnthropic;
    let site: http.Server;
    const hits: string[] = [];
    before(async () => {
      model = await startFakeAnthropic();
      site = http.createServer((req, res) => {
        hits.push(`${req.headers.host}${req.url}`);
        res.setHeader('content-type', 'text/html');
        res.end('<html><head><title>Garden</title></head><body><h1>Roses need water</h1></body></html>');
      });
      await new Promise<void>((r) => site.listen(0, '127.0.0.1', () => r()));
    });
    after(async () => {
      await model.close();
      site.closeAllConnections();
      await new Promise<void>((r) => site.close(() => r()));
    });

    test('the agent opens a page with agent-browser and reads it, through the proxy', async () => {
      const port = (site.address() as AddressInfo).port;
      const s = model.script('browser', [
        {
          reply: toolUse('Bash', {
            command:
              'agent-browser open http://site.test/garden > browser.txt 2>&1; agent-browser get text h1 >> browser.txt 2>&1; agent-browser close >> browser.txt 2>&1',
            timeout: 120_000,
          }),
        },
        { when: toolResult('Bash'), reply: text('browsed') },
      ]);
      const app = await startApp({
        sandbox: 'podman',
        baseUrl: s.baseUrl,
        env: { CONTAINER_IMAGE: image, SANDBOX_MEMORY: '4g' },
        egress: {
          resolve: async (name) => {
            if (name === 'site.test') return ['93.184.216.34'];
            throw Object.assign(new Error(`unknown ${name}`), { code: 'ENOTFOUND' });
          },
          dial: () => net.connect({ host: '127.0.0.1', port }),
        },
      });
      try {
        await app.post('what does the garden page say?');
        await eventually(
          () => app.orch.db.outboxAfter('web:main', 0).some((r) => r.text === 'browsed'),
          180_000,
          'the answer',
        );
        const out = readFileSync(path.join(app.home, 'groups', 'main', 'browser.txt'), 'utf8');
        assert.match(out, /Garden/);
        assert.match(out, /^Roses need water$/m);
        assert.ok(hits.includes('site.test/garden'), `the page came through the proxy: ${hits.join(', ')}`);
      } finally {
        await app.stop();
        removeHome(app.home);
      }
    });
  });
}
