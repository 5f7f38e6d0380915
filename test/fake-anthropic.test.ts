import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  createSdkMcpServer,
  type Options,
  query,
  type SDKMessage,
  type SDKResultMessage,
  tool,
} from '@anthropic-ai/claude-agent-sdk';
import { z } from 'zod';
import {
  agentEnv,
  type FakeAnthropic,
  hang,
  mcpCall,
  startFakeAnthropic,
  text,
  toolResult,
  toolUse,
} from './support/fake-anthropic.js';

/** Each agent run takes ~0.5 s; the margin covers a cold page cache for the 384 MB CLI binary. */
const limit = { timeout: 30_000 };

interface AgentRun {
  messages: SDKMessage[];
  result: SDKResultMessage | undefined;
  thrown: unknown;
  workDir: string;
  stderr: string;
}

/** Runs the real SDK (and its CLI) against the fake in fresh temp dirs under `root`. */
async function runAgent(
  fake: FakeAnthropic,
  root: string,
  prompt: string,
  extra: Partial<Options> = {},
): Promise<AgentRun> {
  const workDir = join(root, 'work');
  const home = join(root, 'home');
  const tmp = join(root, 'tmp');
  await Promise.all([workDir, home, tmp].map((d) => mkdir(d, { recursive: true })));
  const messages: SDKMessage[] = [];
  let stderr = '';
  let thrown: unknown;
  try {
    const run = query({
      prompt,
      options: {
        cwd: workDir,
        env: agentEnv({ baseUrl: fake.baseUrl, home, tmp }),
        settingSources: [],
        permissionMode: 'bypassPermissions',
        allowDangerouslySkipPermissions: true,
        maxTurns: 5,
        stderr: (chunk) => {
          stderr += chunk;
        },
        ...extra,
      },
    });
    for await (const m of run) messages.push(m);
  } catch (err) {
    // The iterator throws after an error result; the result itself was already yielded.
    thrown = err;
  }
  const result = messages.find((m): m is SDKResultMessage => m.type === 'result');
  return { messages, result, thrown, workDir, stderr };
}

/** A fresh fake and temp root per test, both torn down even when the test fails. */
async function withFake(body: (fake: FakeAnthropic, root: string) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'fake-anthropic-'));
  const fake = await startFakeAnthropic();
  try {
    await body(fake, root);
  } finally {
    await fake.close();
    await rm(root, { recursive: true, force: true });
  }
}

function explain(run: AgentRun): string {
  return `thrown: ${String(run.thrown)}\nresult: ${JSON.stringify(run.result)}\nstderr: ${run.stderr}`;
}

test('a Bash tool call writes a file and the model then answers done', limit, () =>
  withFake(async (fake, root) => {
    const script = fake.script('default', [
      {
        reply: toolUse(
          'Bash',
          { command: 'echo hello > out.txt', description: 'Write out.txt' },
          { usage: { input_tokens: 1000, output_tokens: 30 } },
        ),
      },
      { when: toolResult('Bash'), reply: text('done', { usage: { input_tokens: 2000, output_tokens: 40 } }) },
    ]);

    const run = await runAgent(fake, root, 'Write hello to out.txt');

    script.assertDone();
    assert.equal(run.thrown, undefined, explain(run));
    assert.equal(await readFile(join(run.workDir, 'out.txt'), 'utf8'), 'hello\n');
    assert.ok(run.result?.subtype === 'success', explain(run));
    assert.equal(run.result.result, 'done');
    assert.equal(run.result.is_error, false);
    assert.equal(run.result.num_turns, 2);
    assert.deepEqual(
      fake.requests.map((r) => [r.kind, r.apiKey()]),
      [
        ['main', 'test-key'],
        ['main', 'test-key'],
      ],
    );
    assert.match(script.requests[0]?.lastUserText() ?? '', /Write hello to out\.txt/);
    assert.ok(script.requests[0]?.toolsOffered().includes('Bash'));
    const bash = script.requests[1]?.toolResults()[0];
    assert.equal(bash?.toolName, 'Bash');
    assert.notEqual(bash?.is_error, true);
    assert.equal(run.result.usage.input_tokens, 3000);
    assert.equal(run.result.usage.output_tokens, 70);
    const model = script.requests[0]?.model() ?? '';
    assert.equal(run.result.modelUsage[model]?.inputTokens, 3000);
    assert.ok(run.result.total_cost_usd > 0, `total_cost_usd ${run.result.total_cost_usd}`);
  }),
);

test('a non-streaming request gets one complete Message JSON', limit, () =>
  withFake(async (fake) => {
    const script = fake.script('default', [
      { reply: toolUse('Bash', { command: 'ls' }, { id: 'toolu_1', text: 'Listing.' }) },
    ]);

    const res = await fetch(`${fake.baseUrl}/v1/messages?beta=true`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': 'k' },
      body: JSON.stringify({
        model: 'claude-test',
        stream: false,
        max_tokens: 100,
        tools: [{ name: 'Bash', input_schema: { type: 'object' } }],
        messages: [{ role: 'user', content: 'list files' }],
      }),
    });

    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
    const body: unknown = await res.json();
    assert.deepEqual(body, {
      id: 'msg_fake_1',
      type: 'message',
      role: 'assistant',
      model: 'claude-test',
      content: [
        { type: 'text', text: 'Listing.' },
        { type: 'tool_use', id: 'toolu_1', name: 'Bash', input: { command: 'ls' } },
      ],
      stop_reason: 'tool_use',
      stop_sequence: null,
      usage: {
        input_tokens: 100,
        output_tokens: 20,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0,
      },
    });
    assert.equal(script.requests[0]?.lastUserText(), 'list files');
    script.assertDone();
  }),
);

test('a streaming reply follows the SSE event order and splits text into deltas', limit, () =>
  withFake(async (fake) => {
    fake.script('default', [{ reply: text('hello world', { thinking: 'hmm' }) }]);

    const res = await fetch(`${fake.baseUrl}/v1/messages`, {
      method: 'POST',
      body: JSON.stringify({ model: 'm', stream: true, tools: [{ name: 'Bash' }], messages: [] }),
    });
    const events = (await res.text())
      .split('\n\n')
      .filter((e) => e !== '')
      .map((e) => {
        const [name, data] = e.split('\n');
        const parsed: unknown = JSON.parse(data?.replace(/^data: /, '') ?? '');
        return { name: name?.replace(/^event: /, ''), data: parsed };
      });

    assert.deepEqual(
      events.map((e) => e.name),
      [
        'message_start',
        'ping',
        'content_block_start',
        'content_block_delta',
        'content_block_delta',
        'content_block_delta',
        'content_block_stop',
        'content_block_start',
        'content_block_delta',
        'content_block_delta',
        'content_block_stop',
        'message_delta',
        'message_stop',
      ],
    );
    const textDeltas = events.slice(8, 10).map((e) => JSON.stringify(e.data));
    assert.equal(textDeltas.length, 2);
    assert.ok(textDeltas.every((d) => d.includes('text_delta')));
    assert.match(JSON.stringify(events[11]?.data), /"stop_reason":"end_turn"/);
  }),
);

test('side requests, count_tokens and /api/hello are answered without touching the script', limit, () =>
  withFake(async (fake) => {
    const script = fake.script('default', []);
    const post = (path: string, body: unknown) =>
      fetch(`${fake.baseUrl}${path}`, { method: 'POST', body: JSON.stringify(body) });

    const title = await post('/v1/messages?beta=true', {
      model: 'm',
      tools: [],
      output_config: {
        format: {
          type: 'json_schema',
          schema: { type: 'object', properties: { title: { type: 'string' } } },
        },
      },
      messages: [{ role: 'user', content: 'name this session' }],
    });
    const page = await post('/v1/messages', {
      model: 'm',
      messages: [
        {
          role: 'user',
          content: '\nWeb page content:\n---\n# Hi\nthere\n---\n\nWhat is it?\n\nBe brief.\n',
        },
      ],
    });
    const tokens = await post('/v1/messages/count_tokens', { messages: [] });
    const hello = await fetch(`${fake.baseUrl}/api/hello`, { method: 'HEAD' });
    const missing = await fetch(`${fake.baseUrl}/v1/models`);

    const firstText = (m: unknown): unknown =>
      m !== null && typeof m === 'object' && 'content' in m && Array.isArray(m.content)
        ? (m.content[0] as { text?: unknown }).text
        : undefined;
    assert.equal(firstText(await title.json()), '{"title":"Test title"}');
    assert.equal(firstText(await page.json()), '# Hi\nthere');
    assert.deepEqual(await tokens.json(), { input_tokens: 1 });
    assert.equal(hello.status, 200);
    assert.equal(missing.status, 404);
    assert.deepEqual(
      fake.requests.map((r) => r.kind),
      ['side', 'webfetch', 'other', 'other', 'other'],
    );
    assert.equal(fake.errors.length, 1);
    assert.match(fake.errors[0] ?? '', /unknown route: #5 GET \/v1\/models/);
    assert.equal(script.pending(), 0);
    assert.throws(() => script.assertDone(), /unknown route/);
  }),
);

test('requests are routed by their /s/KEY prefix and a runaway script is capped', limit, async () => {
  const fake = await startFakeAnthropic({ maxRequestsPerScript: 2 });
  try {
    const a = fake.script('a', [
      { reply: text('from a') },
      { reply: text('a again') },
      { reply: text('a 3') },
    ]);
    const b = fake.script('b', [{ reply: text('from b') }]);
    const ask = async (base: string): Promise<string> => {
      const res = await fetch(`${base}/v1/messages?beta=true`, {
        method: 'POST',
        body: JSON.stringify({
          model: 'm',
          tools: [{ name: 'Bash' }],
          messages: [{ role: 'user', content: 'hi' }],
        }),
      });
      const body = (await res.json()) as { content: Array<{ text: string }> };
      return body.content[0]?.text ?? '';
    };

    assert.equal(a.baseUrl, `${fake.baseUrl}/s/a`);
    assert.deepEqual(
      [await ask(a.baseUrl), await ask(b.baseUrl), await ask(a.baseUrl), await ask(a.baseUrl)],
      ['from a', 'from b', 'a again', 'FAKE: unscripted request #4'],
    );
    b.assertDone();
    assert.deepEqual(
      a.requests.map((r) => r.key),
      ['a', 'a', 'a'],
    );
    assert.throws(() => a.assertDone(), /1 step\(s\)[\s\S]*more than 2 requests for script 'a'/);
  } finally {
    await fake.close();
  }
});

test('an unscripted request is recorded in errors and answered without an HTTP error', limit, () =>
  withFake(async (fake, root) => {
    const script = fake.script('default', [{ when: () => false, reply: text('never') }]);

    const run = await runAgent(fake, root, 'Say something');

    assert.equal(run.thrown, undefined, explain(run));
    assert.ok(run.result?.subtype === 'success', explain(run));
    assert.equal(run.result.is_error, false);
    assert.equal(run.result.result, 'FAKE: unscripted request #1');
    assert.equal(fake.requests.length, 1);
    assert.equal(fake.errors.length, 1);
    assert.match(fake.errors[0] ?? '', /unscripted request #1 .*when\(\) did not match.*Say something/);
    assert.equal(script.pending(), 1);
    assert.throws(() => script.assertDone(), /1 step\(s\).*\n.*error: unscripted request #1[\s\S]*#1 POST/);
  }),
);

test('an in-process MCP tool called through mcpCall runs its handler', limit, () =>
  withFake(async (fake, root) => {
    const calls: Array<{ text: string; chatId: number }> = [];
    const server = createSdkMcpServer({
      name: 'grp',
      version: '1.0.0',
      tools: [
        tool(
          'send_message',
          'Send a message to the chat',
          { text: z.string(), chatId: z.number() },
          async (args) => {
            calls.push(args);
            return { content: [{ type: 'text', text: `sent:${args.text}` }] };
          },
        ),
      ],
    });
    const script = fake.script('default', [
      ...mcpCall('grp', 'send_message', { text: 'hello group', chatId: 7 }),
      { when: toolResult('mcp__grp__send_message'), reply: text('sent it') },
    ]);

    const run = await runAgent(fake, root, 'Tell the group hello', { mcpServers: { grp: server } });

    script.assertDone();
    assert.equal(run.thrown, undefined, explain(run));
    assert.deepEqual(calls, [{ text: 'hello group', chatId: 7 }]);
    assert.equal(run.result?.subtype === 'success' ? run.result.result : undefined, 'sent it');
    assert.match(script.requests[1]?.toolResults()[0]?.content ?? '', /mcp__grp__send_message/);
    assert.deepEqual(
      script.requests[2]?.toolResults().map((r) => r.content),
      ['sent:hello group'],
    );
  }),
);

test('close() returns promptly while a reply hangs', limit, async () => {
  const fake = await startFakeAnthropic();
  fake.script('default', [{ reply: hang() }]);
  const pending = fetch(`${fake.baseUrl}/v1/messages`, {
    method: 'POST',
    body: JSON.stringify({ model: 'm', stream: true, tools: [{ name: 'Bash' }], messages: [] }),
  }).catch((err: unknown) => err);
  while (fake.requests.length === 0) await new Promise((r) => setTimeout(r, 10));
  const started = Date.now();
  await fake.close();
  assert.ok(Date.now() - started < 1000);
  assert.ok((await pending) instanceof Error);
});
