// Claude Code's WebSearch in a non-main group: the search runs inside the model API (a request
// offering the `web_search` server tool), so it goes through the credential proxy like any model
// call — with the real key injected — and needs no egress at all, even under a strict allowlist.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { eventually, REAL_KEY, removeHome, startApp } from './support/app.js';
import { deferredToolCall, startFakeAnthropic, text, toolResult } from './support/fake-anthropic.js';

test('WebSearch works in a non-main group with no egress: the search is a model request through the proxy', async () => {
  const fake = await startFakeAnthropic();
  const s = fake.script('default', [
    ...deferredToolCall('WebSearch', { query: 'nanoclaw release notes' }),
    {
      when: (req) => req.toolsOffered().includes('web_search'),
      reply: text('NanoClaw 2.0 was released on 27 November.'),
    },
    { when: toolResult('WebSearch'), reply: text('Here is what I found.') },
  ]);
  const app = await startApp({ baseUrl: fake.baseUrl });
  const chat = 'discord:808';
  try {
    app.orch.db.addGroup(
      {
        jid: chat,
        name: 'Readers',
        folder: 'readers',
        trigger: '@Krabby',
        requiresTrigger: false,
        isMain: false,
      },
      Date.now(),
    );
    // An allowlist that matches nothing the search could need: egress is not involved.
    app.orch.db.setGroupEgress(chat, ['nothing.invalid']);
    app.orch.ingest({
      chatJid: chat,
      chatName: 'Readers',
      platformId: 'q1',
      sender: 'discord:5',
      senderName: 'Ann',
      text: 'what is new with nanoclaw?',
      at: Date.now(),
    });
    await eventually(
      () => app.orch.db.outboxAfter(chat, 0).some((r) => r.text === 'Here is what I found.'),
      30_000,
      'the answer',
    );
    s.assertDone();
    const search = s.requests.find((r) => r.toolsOffered().includes('web_search'));
    assert.ok(search, 'the CLI asked the model API to search');
    assert.match(JSON.stringify(search?.body), /nanoclaw release notes/);
    for (const r of s.requests)
      assert.equal(r.apiKey(), REAL_KEY, 'every model request came through the proxy');
    const result = s.requests.flatMap((r) => r.toolResults()).find((r) => r.toolName === 'WebSearch');
    assert.match(result?.content ?? '', /NanoClaw 2\.0 was released on 27 November\./);
    assert.doesNotMatch(app.logs.join(''), /egress refused/);
  } finally {
    await app.stop();
    removeHome(app.home);
    await fake.close();
  }
});
