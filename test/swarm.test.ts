// Agent teams end to end: the lead (the chat's agent, a real sandboxed Claude Code CLI) starts
// sub-agents with Claude Code's Agent tool; each sub-agent speaks in the chat under its own name
// through the `nanoclaw` send_message tool, and only the lead's own text is the assistant's reply.
// Sub-agent definitions of a group come from its folder (.claude/agents/*.md).
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, afterEach, before, test } from 'node:test';
import { eventually, openEvents, removeHome, type SseClient, startApp, type TestApp } from './support/app.js';
import {
  type FakeAnthropic,
  type Matcher,
  type RecordedRequest,
  type Script,
  type Step,
  startFakeAnthropic,
  text,
  toolResult,
  toolUse,
} from './support/fake-anthropic.js';

const MAIN = 'web:main';
const SEND = 'mcp__nanoclaw__send_message';
const ASSISTANT = 'Andy';

let fake: FakeAnthropic;
before(async () => {
  fake = await startFakeAnthropic();
});
after(async () => {
  await fake.close();
});

const running = new Set<{ app: TestApp; sse: SseClient }>();
afterEach(async () => {
  for (const r of [...running]) {
    running.delete(r);
    r.sse.close();
    await r.app.stop();
    removeHome(r.app.home);
  }
});

async function start(script: Script) {
  const app = await startApp({ baseUrl: script.baseUrl, env: { ASSISTANT_NAME: ASSISTANT } });
  const sse = await openEvents(app.port);
  running.add({ app, sse });
  return { app, sse };
}

/** The lead starts a sub-agent in the foreground: its report is the Agent tool's result. */
const delegate = (subagentType: string, description: string, prompt: string) =>
  toolUse('Agent', { description, prompt, subagent_type: subagentType, run_in_background: false });

/** A sub-agent's request, for the sub-agent whose task is `task`. */
const of =
  (task: string, also: Matcher = () => true): Matcher =>
  (r) =>
    r.firstUserText().includes(task) && also(r);

/**
 * A general-purpose teammate: it loads send_message (deferred behind ToolSearch), says `says`
 * in the chat as `name` (with a line of its own beside the call), then reports back to the lead.
 */
function teammate(name: string, task: string, says: string, report: string): Step[] {
  return [
    {
      when: of(task, (r) => r.toolResults().length === 0),
      reply: toolUse('ToolSearch', { query: `select:${SEND}`, max_results: 1 }),
    },
    // Text beside a sub-agent's tool call is the sub-agent's, never a reply in the chat.
    {
      when: of(task, toolResult('ToolSearch')),
      reply: toolUse(SEND, { text: says, sender: name }, { text: `${name} here, posting now.` }),
    },
    { when: of(task, toolResult(SEND)), reply: text(report) },
  ];
}

/** The chat's outbox as (text, sender) pairs; sender null is the assistant itself. */
const outbox = (app: TestApp) =>
  app.orch.db.outboxAfter(MAIN, 0).map((r) => ({ text: r.text, sender: r.sender }));

/** Waits for the lead's answer and the end of the run, so nothing can still be on its way. */
async function answered(app: TestApp, sse: SseClient, answer: string): Promise<void> {
  await sse.waitFor((e) => e.event === 'message' && (e.data as { text: string }).text === answer, 60_000);
  await eventually(() => app.orch.db.recentRuns(1)[0]?.status === 'ok', 30_000, 'the run to end');
  await eventually(() => app.orch.db.outboxPendingCount() === 0, 30_000, 'the outbox to drain');
}

/** The text blocks of a message's content. */
function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content.map((b: { text?: unknown }) => (typeof b?.text === 'string' ? b.text : '')).join('\n');
}

/** What a request shows the model as text: its system blocks and its messages' text. */
const shown = (r: RecordedRequest) =>
  [r.systemText(), ...r.messages().map((m) => textOf(m.content))].join('\n');

test('two sub-agents of the lead speak in the web chat under their own names, each exactly once, and the lead answers as the assistant', async () => {
  const research = 'Find three facts about octopuses and post them as Researcher.';
  const write = 'Write a one-line summary of the facts and post it as Writer.';
  const facts = 'Octopuses have three hearts, blue blood and nine brains.';
  const summary = 'Summary: an octopus is mostly heart and brain.';
  const answer = 'My team has posted the facts and a summary above.';
  const script = fake.script(
    'swarm',
    [
      { reply: delegate('general-purpose', 'Research octopuses', research) },
      { when: toolResult('Agent'), reply: delegate('general-purpose', 'Summarise the facts', write) },
      { when: toolResult('Agent'), reply: text(answer) },
    ],
    {
      subagent: [
        ...teammate('Researcher', research, facts, 'Posted three facts.'),
        ...teammate('Writer', write, summary, 'Posted the summary.'),
      ],
    },
  );
  const { app, sse } = await start(script);
  await app.post('research octopuses with your team');
  await answered(app, sse, answer);

  assert.deepEqual(outbox(app), [
    { text: facts, sender: 'Researcher' },
    { text: summary, sender: 'Writer' },
    { text: answer, sender: null },
  ]);
  assert.deepEqual(
    sse.messages().map((m) => ({ text: m.text, sender: m.sender })),
    [
      { text: facts, sender: 'Researcher' },
      { text: summary, sender: 'Writer' },
      { text: answer, sender: ASSISTANT },
    ],
  );

  // Each sub-agent ran as a sub-agent of the lead's session, loaded the tool and was told it was sent.
  const subagents = script.requests.filter((r) => r.kind === 'subagent');
  assert.equal(subagents.length, 6);
  const lead = script.requests.find((r) => r.kind === 'main');
  assert.ok(subagents.every((r) => r.sessionId() === lead?.sessionId()));
  for (const task of [research, write]) {
    const own = subagents.filter(of(task));
    assert.equal(own.length, 3, task);
    assert.ok(shown(own[0] as RecordedRequest).includes(SEND), 'send_message is among its deferred tools');
    assert.ok(own[2]?.toolsOffered().includes(SEND), 'loaded by ToolSearch');
    assert.deepEqual(
      own[2]?.toolResults().map((t) => [t.toolName, t.content, t.is_error]),
      [[SEND, `sent to ${MAIN}`, undefined]],
    );
  }
  // The lead got each report as the Agent tool's result.
  const reports = script.requests
    .filter((r) => r.kind === 'main')
    .flatMap((r) => r.toolResults().filter((t) => t.toolName === 'Agent'))
    .map((t) => t.content);
  assert.equal(reports.length, 2);
  assert.match(reports[0] ?? '', /Posted three facts\./);
  assert.match(reports[1] ?? '', /Posted the summary\./);
  script.assertDone();
});

test("a sub-agent defined in the group folder's .claude/agents is offered to the lead and runs with its own prompt and tools", async () => {
  const task = 'Find out when the bakery opens and tell the chat.';
  const opens = 'The bakery opens at 7:30.';
  const answer = 'The researcher found the opening time.';
  const script = fake.script(
    'agent-file',
    [
      { reply: delegate('researcher', 'Bakery hours', task) },
      { when: toolResult('Agent'), reply: text(answer) },
    ],
    {
      subagent: [
        // Listed in `tools`, the MCP tool is loaded from the start: no ToolSearch.
        { when: of(task), reply: toolUse(SEND, { text: opens, sender: 'Researcher' }) },
        { when: of(task, toolResult(SEND)), reply: text('Told the chat: 7:30.') },
      ],
    },
  );
  const { app, sse } = await start(script);
  const agents = path.join(app.home, 'groups', 'main', '.claude', 'agents');
  mkdirSync(agents, { recursive: true });
  writeFileSync(
    path.join(agents, 'researcher.md'),
    [
      '---',
      'name: researcher',
      'description: Looks things up for the team and reports them in the chat.',
      `tools: Bash, ${SEND}`,
      '---',
      'You are the team researcher of the Krabby household. Check every fact twice.',
      '',
    ].join('\n'),
  );
  await app.post('when does the bakery open?');
  await answered(app, sse, answer);

  const lead = script.requests.find((r) => r.kind === 'main') as RecordedRequest;
  assert.match(
    shown(lead),
    /Available agent types for the Agent tool:\n[\s\S]*^- researcher: Looks things up for the team and reports them in the chat\. \(Tools: Bash, mcp__nanoclaw__send_message\)$/m,
  );
  const sub = script.requests.filter((r) => r.kind === 'subagent');
  assert.equal(sub.length, 2);
  for (const r of sub) {
    assert.match(
      r.systemText(),
      /^You are the team researcher of the Krabby household\. Check every fact twice\.$/m,
    );
    assert.doesNotMatch(r.systemText(), /General-purpose|Your strengths:/);
    const tools = r.toolsOffered();
    assert.ok(tools.includes('Bash') && tools.includes(SEND), JSON.stringify(tools));
    for (const other of ['Write', 'Edit', 'Read', 'Agent', 'ToolSearch'])
      assert.ok(!tools.includes(other), other);
  }
  assert.deepEqual(outbox(app), [
    { text: opens, sender: 'Researcher' },
    { text: answer, sender: null },
  ]);
  script.assertDone();
});
