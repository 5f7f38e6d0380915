// The allowed path for real: the proxy dials a test host in a network namespace this test creates
// (nothing is injected but the name lookup), and Claude Code's own WebFetch reaches it over TLS
// through the bridge and the proxy's CONNECT tunnel, with the preflight to Anthropic switched off.
// A name the group's allowlist leaves out is refused, and the agent is told that policy blocked it.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { eventually, removeHome, startApp } from './support/app.js';
import {
  deferredToolCall,
  type FakeAnthropic,
  startFakeAnthropic,
  text,
  toolResult,
  toolUse,
} from './support/fake-anthropic.js';
import { type NetnsHost, netnsUnderTest, startNetnsHost } from './support/netns.js';

if (netnsUnderTest()) {
  describe('egress to a real host in a network namespace', () => {
    let model: FakeAnthropic;
    let host: NetnsHost;
    before(async () => {
      model = await startFakeAnthropic();
      host = await startNetnsHost(['site.test', 'other.test']);
    });
    after(async () => {
      await model.close();
      await host.close();
    });

    test('curl and WebFetch reach an allowed host; a host outside the group allowlist is refused plainly', async () => {
      const s = model.script('netns', [
        { reply: toolUse('Bash', { command: 'curl -sS http://site.test/curl > curl.txt 2>&1' }) },
        ...deferredToolCall('WebFetch', { url: 'https://site.test/page', prompt: 'What does it say?' }).map(
          (step, i) => (i === 0 ? { ...step, when: toolResult('Bash') } : step),
        ),
        {
          when: toolResult('WebFetch'),
          reply: toolUse('WebFetch', { url: 'https://other.test/secret', prompt: 'What does it say?' }),
        },
        { when: toolResult('WebFetch'), reply: text('fetched') },
      ]);
      const app = await startApp({
        baseUrl: s.baseUrl,
        env: { SANDBOX_CA_CERTS: '/workspace/global/test-ca.pem' },
        egress: {
          // Names resolve from this map (no DNS); the dial is the real one.
          resolve: async (name) => {
            if (name === 'site.test' || name === 'other.test') return [host.address];
            throw Object.assign(new Error(`unknown ${name}`), { code: 'ENOTFOUND' });
          },
          testAddresses: [host.address],
        },
      });
      try {
        writeFileSync(path.join(app.home, 'groups', 'global', 'test-ca.pem'), host.caPem);
        app.orch.db.setGroupEgress('web:main', ['site.test']);
        await app.post('fetch the pages');
        await eventually(
          () => app.orch.db.outboxAfter('web:main', 0).some((r) => r.text === 'fetched'),
          60_000,
          'the reply',
        );
        s.assertDone();
        const folder = path.join(app.home, 'groups', 'main');
        assert.equal(readFileSync(path.join(folder, 'curl.txt'), 'utf8'), 'hello from the netns host /curl');
        const results = s.requests.flatMap((r) => r.toolResults()).filter((r) => r.toolName === 'WebFetch');
        const [allowed, refused] = [results[0], results.at(-1)];
        assert.match(allowed?.content ?? '', /hello from the netns host \/page/);
        assert.match(refused?.content ?? '', /blocked by the network egress proxy/);
        assert.deepEqual(host.hits(), ['site.test /curl', 'site.test /page']);
        assert.match(
          app.logs.join(''),
          /group main: egress refused other\.test:443: other\.test not in allowlist/,
        );
      } finally {
        await app.stop();
        removeHome(app.home);
      }
    });
  });
}
