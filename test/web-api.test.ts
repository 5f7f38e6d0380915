// The web chat's HTTP contract (DESIGN "Contracts", Web API), against the real app: real store,
// real bwrap sandbox, the scripted fake model. Each suite gets its own app and its own fake script
// (`script.baseUrl`), so one suite's agent never takes another suite's scripted replies.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { type Channel, ChannelError } from '../src/channels/channel.js';
import { ConfigError, loadConfig, projectRoot } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { startOrchestrator } from '../src/orchestrator.js';
import {
  eventually,
  openEvents,
  postJson,
  removeHome,
  request,
  type SseClient,
  startApp,
  type TestApp,
  tempHome,
  testEnv,
} from './support/app.js';
import {
  type FakeAnthropic,
  message,
  type Script,
  startFakeAnthropic,
  text,
} from './support/fake-anthropic.js';

const MAX_BODY = 256 * 1024;
const JSON_TYPE = { 'content-type': 'application/json' };

let fake: FakeAnthropic;
before(async () => {
  fake = await startFakeAnthropic();
});
after(async () => {
  await fake.close();
});

/** Asserts a refusal: the status, and a body that is `{"error"}` with one line saying why. */
function assertOneLineError(res: { status: number; text: string }, status: number): string {
  assert.equal(res.status, status, `expected ${status}, got ${res.status}: ${res.text}`);
  const body = JSON.parse(res.text) as { error?: unknown };
  assert.equal(typeof body.error, 'string', `no "error" string in ${res.text}`);
  const error = body.error as string;
  assert.ok(error.length > 0, 'the error is empty');
  assert.ok(!error.includes('\n'), `the error is not one line: ${JSON.stringify(error)}`);
  return error;
}

function post(port: number, body: string, headers: Record<string, string> = JSON_TYPE) {
  return request(port, 'POST', '/api/messages', body, headers);
}

/** Waits until the outbox of web:main holds a row with `text` (the agent's answer is committed). */
function answered(app: TestApp, answer: string) {
  return eventually(
    () => app.orch.db.outboxAfter('web:main', 0).find((r) => r.text === answer),
    30_000,
    `the answer "${answer}" in the outbox`,
  );
}

/** Waits until every live agent has finished its turn (its result is in) and nothing waits. */
function agentsIdle(app: TestApp): Promise<boolean> {
  return eventually(
    () => {
      const s = app.orch.queue.snapshot();
      return s.waiting.length === 0 && s.retrying.length === 0 && s.live.every((l) => l.idle);
    },
    30_000,
    'the agent to finish its turn',
  );
}

/** Resolves once the replay is over: the server writes one `status` event right after it. */
async function afterReplay(sse: SseClient): Promise<void> {
  await sse.waitFor((e) => e.event === 'status', 10_000);
}

describe('refused requests store nothing', () => {
  let app: TestApp;
  before(async () => {
    // Nothing is scripted: no request in this suite may reach the model.
    app = await startApp({ baseUrl: fake.script('refusals', []).baseUrl });
  });
  after(async () => {
    await app.stop();
    removeHome(app.home);
  });

  const stored = () => app.orch.db.messagesAfter('web:main', 0);

  test('a POST with a foreign Origin is refused with 403 and nothing is stored', async () => {
    const res = await post(app.port, JSON.stringify({ text: 'steal my keys' }), {
      ...JSON_TYPE,
      origin: 'http://evil.example',
    });
    assertOneLineError(res, 403);
    assert.deepEqual(stored(), []);
  });

  test('a POST with a foreign Origin on the same host name but another port is refused', async () => {
    const res = await post(app.port, JSON.stringify({ text: 'hi' }), {
      ...JSON_TYPE,
      origin: `http://127.0.0.1:${app.port + 1}`,
    });
    assertOneLineError(res, 403);
    assert.deepEqual(stored(), []);
  });

  test('a request with a foreign Host header (DNS rebinding) is refused with 403', async () => {
    const host = `evil.example:${app.port}`;
    const posted = await post(app.port, JSON.stringify({ text: 'hi' }), { ...JSON_TYPE, host });
    assertOneLineError(posted, 403);
    assertOneLineError(await request(app.port, 'GET', '/api/status', undefined, { host }), 403);
    assertOneLineError(await request(app.port, 'GET', '/', undefined, { host }), 403);
    assertOneLineError(await request(app.port, 'GET', '/api/events', undefined, { host }), 403);
    assert.deepEqual(stored(), []);
  });

  test('a Host header naming loopback on another port is refused with 403', async () => {
    const res = await request(app.port, 'GET', '/api/status', undefined, {
      host: `127.0.0.1:${app.port + 1}`,
    });
    assertOneLineError(res, 403);
  });

  test('a POST with Content-Type text/plain is refused with 415', async () => {
    const res = await post(app.port, JSON.stringify({ text: 'hi' }), { 'content-type': 'text/plain' });
    assertOneLineError(res, 415);
    assert.deepEqual(stored(), []);
  });

  test('a POST without a Content-Type is refused with 415', async () => {
    const res = await post(app.port, JSON.stringify({ text: 'hi' }), {});
    assertOneLineError(res, 415);
    assert.deepEqual(stored(), []);
  });

  test('a body over 256 KiB is refused with 413', async () => {
    const body = JSON.stringify({ text: 'x'.repeat(MAX_BODY) });
    assert.ok(Buffer.byteLength(body) > MAX_BODY);
    assertOneLineError(await post(app.port, body), 413);
    assert.deepEqual(stored(), []);
  });

  test('a body of exactly 256 KiB is read and judged on its content, one byte more is 413', async () => {
    const base = '{"text":""}';
    const exact = base + ' '.repeat(MAX_BODY - base.length);
    assert.equal(Buffer.byteLength(exact), MAX_BODY);
    assert.match(assertOneLineError(await post(app.port, exact), 400), /empty/);
    assertOneLineError(await post(app.port, `${exact} `), 413);
    assert.deepEqual(stored(), []);
  });

  const badBodies: Array<[string, string]> = [
    ['an empty body', ''],
    ['invalid JSON', '{"text": "hi"'],
    ['a JSON value that is not an object', '"hi"'],
    ['an object without text', '{}'],
    ['an empty text', '{"text":""}'],
    ['a text of blanks only', '{"text":"   "}'],
    ['a text that is a number', '{"text":5}'],
    ['an id with a path trick', '{"text":"hi","id":"../x"}'],
    ['an id of 200 characters', JSON.stringify({ text: 'hi', id: 'a'.repeat(200) })],
    ['an empty id', '{"text":"hi","id":""}'],
    ['an id that is a number', '{"text":"hi","id":7}'],
  ];
  for (const [what, body] of badBodies) {
    test(`a POST with ${what} is refused with 400 and a one-line error`, async () => {
      assertOneLineError(await post(app.port, body), 400);
      assert.deepEqual(stored(), []);
    });
  }

  test('an unknown route answers 404', async () => {
    assertOneLineError(await request(app.port, 'GET', '/nope', undefined), 404);
    assertOneLineError(await request(app.port, 'GET', '/api/nope', undefined), 404);
    assertOneLineError(await request(app.port, 'DELETE', '/api/messages', undefined), 404);
  });

  test('GET / serves the chat page as HTML', async () => {
    const res = await request(app.port, 'GET', '/', undefined);
    assert.equal(res.status, 200);
    assert.match(String(res.headers['content-type']), /^text\/html/);
    assert.ok(res.text.includes('NanoClaw'), 'the page names NanoClaw');
  });

  test('GET /api/status lists the groups (web:main is main) and the queue', async () => {
    const res = await request(app.port, 'GET', '/api/status', undefined);
    assert.equal(res.status, 200);
    assert.match(String(res.headers['content-type']), /^application\/json/);
    const status = JSON.parse(res.text) as {
      groups: Array<{ chat: string; folder: string; main: boolean }>;
      queue: { live: unknown[]; waiting: unknown[] };
      recentRuns: unknown[];
    };
    const web = status.groups.find((g) => g.chat === 'web:main');
    assert.ok(web, `web:main is not in ${res.text}`);
    assert.equal(web.main, true);
    assert.equal(web.folder, 'main');
    assert.ok(Array.isArray(status.queue.live));
    assert.ok(Array.isArray(status.queue.waiting));
    assert.ok(Array.isArray(status.recentRuns));
  });

  test('no request of the refusals reached the model', () => {
    assert.deepEqual(stored(), []);
    assert.deepEqual(
      fake.requests.filter((r) => r.key === 'refusals'),
      [],
    );
  });
});

describe('accepted messages', () => {
  let app: TestApp;
  let script: Script;
  before(async () => {
    script = fake.script('accepted', []);
    app = await startApp({ baseUrl: script.baseUrl });
  });
  after(async () => {
    await app.stop();
    removeHome(app.home);
  });

  test('a POST with the same-origin Origin is accepted with 202 and stored', async () => {
    script = fake.script('accepted', [{ reply: text('ok one') }]);
    const res = await postJson(
      app.port,
      '/api/messages',
      { text: 'hello from the page' },
      { origin: `http://127.0.0.1:${app.port}` },
    );
    assert.equal(res.status, 202);
    const { id } = res.body as { id: string };
    assert.equal(typeof id, 'string');
    const rows = app.orch.db.messagesAfter('web:main', 0);
    assert.equal(rows.length, 1);
    assert.equal(rows[0]?.text, 'hello from the page');
    assert.equal(rows[0]?.platformId, id);
    await answered(app, 'ok one');
    await agentsIdle(app);
  });

  test('a retried POST with the same id is accepted twice with that id and stored once', async () => {
    script = fake.script('accepted', [{ reply: text('ok two') }]);
    const before = app.orch.db.latestMessageId('web:main');
    const first = await app.post('only once please', 'retry-1');
    const second = await app.post('only once please', 'retry-1');
    assert.deepEqual(first, { status: 202, body: { id: 'retry-1' } });
    assert.deepEqual(second, { status: 202, body: { id: 'retry-1' } });
    const rows = app.orch.db.messagesAfter('web:main', before);
    assert.deepEqual(
      rows.map((r) => [r.platformId, r.text]),
      [['retry-1', 'only once please']],
    );
    await answered(app, 'ok two');
    await agentsIdle(app);
  });

  test('the model was asked once per stored message and nothing unscripted', async () => {
    await eventually(() => script.pending() === 0, 10_000, 'both scripted replies taken');
    script.assertDone();
  });
});

describe('with WEB_TOKEN set', () => {
  const token = 'secret-token-123';
  let app: TestApp;
  let script: Script;
  before(async () => {
    script = fake.script('token', []);
    app = await startApp({ baseUrl: script.baseUrl, env: { WEB_TOKEN: token } });
  });
  after(async () => {
    await app.stop();
    removeHome(app.home);
  });

  test('every route without the token is refused with 401', async () => {
    assertOneLineError(await request(app.port, 'GET', '/', undefined), 401);
    assertOneLineError(await post(app.port, JSON.stringify({ text: 'hi' })), 401);
    assertOneLineError(await request(app.port, 'GET', '/api/events', undefined), 401);
    assertOneLineError(await request(app.port, 'GET', '/api/status', undefined), 401);
    assert.deepEqual(app.orch.db.messagesAfter('web:main', 0), []);
  });

  test('a wrong token is refused with 401, in the header or the query', async () => {
    const wrong = { authorization: 'Bearer secret-token-124' };
    assertOneLineError(await request(app.port, 'GET', '/api/status', undefined, wrong), 401);
    assertOneLineError(await request(app.port, 'GET', '/api/status?token=secret', undefined), 401);
    assertOneLineError(
      await request(app.port, 'GET', '/api/status', undefined, { authorization: token }),
      401,
    );
  });

  test('a Bearer header with the token opens every route', async () => {
    const auth = { authorization: `Bearer ${token}` };
    const page = await request(app.port, 'GET', '/', undefined, auth);
    assert.equal(page.status, 200);
    assert.ok(page.text.includes('NanoClaw'));
    const status = await request(app.port, 'GET', '/api/status', undefined, auth);
    assert.equal(status.status, 200);
    script = fake.script('token', [{ reply: text('ok with a token') }]);
    const posted = await postJson(app.port, '/api/messages', { text: 'hi', id: 'tok-1' }, auth);
    assert.deepEqual(posted, { status: 202, body: { id: 'tok-1' } });
    await answered(app, 'ok with a token');
    await agentsIdle(app);
  });

  test('a ?token= query parameter with the token opens every route', async () => {
    const q = `?token=${token}`;
    assert.equal((await request(app.port, 'GET', `/${q}`, undefined)).status, 200);
    assert.equal((await request(app.port, 'GET', `/api/status${q}`, undefined)).status, 200);
    const sse = await openEvents(app.port, undefined, q);
    try {
      await sse.waitFor((e) => e.event === 'status', 10_000);
    } finally {
      sse.close();
    }
  });

  test('the token suite asked the model only for the one authorized message', () => {
    script.assertDone();
  });
});

describe('Server-Sent Events', () => {
  let app: TestApp;
  let live: SseClient;
  const questions = ['first question, secret-user-words-1', 'second question, secret-user-words-2'];
  const answers = ['first answer', 'second answer'];
  let firstId = '';
  const lastId = () => String(app.orch.db.latestOutboxId('web:main'));
  before(async () => {
    const script = fake.script('sse', [{ reply: text(answers[0] ?? '') }, { reply: text(answers[1] ?? '') }]);
    app = await startApp({ baseUrl: script.baseUrl });
    live = await openEvents(app.port);
    for (const [i, q] of questions.entries()) {
      assert.equal((await app.post(q)).status, 202);
      const ev = await live.waitFor(
        (e) => e.event === 'message' && (e.data as { text: string }).text === answers[i],
      );
      if (i === 0) firstId = ev.id;
      // The next question goes to an idle agent: one turn per question (see the regression below
      // for a question that arrives mid-turn).
      await agentsIdle(app);
    }
    await live.waitFor(
      (e) => e.event === 'status' && (e.data as { working: boolean }).working === false && e.id === lastId(),
    );
  });
  after(async () => {
    live?.close();
    await app?.stop();
    if (app) removeHome(app.home);
  });

  test('a live client receives each assistant message exactly once', () => {
    assert.deepEqual(
      live.messages().map((m) => m.text),
      answers,
    );
  });

  test('every event carries a numeric id: and message events carry id, text, sender and at', () => {
    assert.ok(live.events.length >= 3, `too few events: ${JSON.stringify(live.events)}`);
    for (const e of live.events) assert.match(e.id, /^\d+$/, `event without an id: ${JSON.stringify(e)}`);
    for (const e of live.events.filter((x) => x.event === 'message')) {
      const d = e.data as { id: unknown; text: unknown; sender: unknown; at: unknown };
      assert.equal(d.id, e.id);
      assert.equal(typeof d.text, 'string');
      assert.equal(d.sender, 'Krabby');
      assert.equal(typeof d.at, 'number');
    }
    for (const e of live.events.filter((x) => x.event === 'status')) {
      assert.equal(typeof (e.data as { working: unknown }).working, 'boolean');
    }
  });

  test('message events never carry the user’s own text', () => {
    for (const m of live.messages()) {
      for (const q of questions) assert.ok(!m.text.includes(q), `the user's text was echoed: ${m.text}`);
      assert.ok(!m.text.includes('secret-user-words'), `the user's text was echoed: ${m.text}`);
    }
  });

  test('event ids never go backwards, so a reconnect never replays what a client already saw', () => {
    let seen = 0;
    for (const e of live.events) {
      assert.ok(Number(e.id) >= seen, `event ${JSON.stringify(e)} came after an event with id ${seen}`);
      seen = Number(e.id);
    }
  });

  test('status events say working before each answer and not working after it', () => {
    const states = live.events.map((e) =>
      e.event === 'status' ? ((e.data as { working: boolean }).working ? 'working' : 'idle') : 'message',
    );
    assert.deepEqual(states, ['idle', 'working', 'message', 'idle', 'working', 'message', 'idle']);
  });

  test('a reconnect with Last-Event-ID replays exactly the messages after it', async () => {
    const sse = await openEvents(app.port, firstId);
    try {
      await afterReplay(sse);
      assert.deepEqual(
        sse.messages().map((m) => m.text),
        [answers[1]],
      );
    } finally {
      sse.close();
    }
  });

  test('a reconnect with ?lastEventId= replays exactly the messages after it', async () => {
    const sse = await openEvents(app.port, undefined, `?lastEventId=${firstId}`);
    try {
      await afterReplay(sse);
      assert.deepEqual(
        sse.messages().map((m) => m.text),
        [answers[1]],
      );
    } finally {
      sse.close();
    }
  });

  test('a reconnect with Last-Event-ID 0 replays every message in order', async () => {
    const sse = await openEvents(app.port, '0');
    try {
      await afterReplay(sse);
      assert.deepEqual(
        sse.messages().map((m) => m.text),
        answers,
      );
    } finally {
      sse.close();
    }
  });

  test('a reconnect with the last status event’s id replays nothing', async () => {
    const last = live.events.at(-1);
    assert.ok(last);
    const sse = await openEvents(app.port, last.id);
    try {
      await afterReplay(sse);
      assert.deepEqual(sse.messages(), []);
    } finally {
      sse.close();
    }
  });

  test('a new client without Last-Event-ID receives no old messages', async () => {
    const sse = await openEvents(app.port);
    try {
      await afterReplay(sse);
      // Give a wrongly delayed replay a moment to show up before concluding there is none.
      await new Promise((r) => setTimeout(r, 200));
      assert.deepEqual(sse.messages(), []);
      const status = sse.events.find((e) => e.event === 'status');
      assert.equal(status?.id, String(app.orch.db.latestOutboxId('web:main')));
    } finally {
      sse.close();
    }
  });
});

describe('regressions', () => {
  test('a follow-up posted while the agent is still answering is counted as its own run', async () => {
    // The first answer is two text blocks 1.5 s apart: the follow-up is posted between them, so it
    // reaches the agent mid-turn and the CLI answers it in a second turn after the first result.
    const script = fake.script('mid-turn', [
      {
        reply: message(
          [
            { type: 'text', text: 'first answer' },
            { type: 'text', text: 'first answer, continued' },
          ],
          { betweenBlocksMs: 1500 },
        ),
      },
      { reply: text('second answer') },
    ]);
    // A short idle timeout: the bug leaves the first turn's idle timer running (it is overwritten,
    // never cleared), which would otherwise keep this test process alive for 30 minutes.
    const app = await startApp({ baseUrl: script.baseUrl, env: { IDLE_TIMEOUT_MS: '2000' } });
    const live = await openEvents(app.port);
    try {
      assert.equal((await app.post('first question')).status, 202);
      await live.waitFor(
        (e) => e.event === 'message' && (e.data as { text: string }).text === 'first answer',
      );
      assert.equal((await app.post('second question')).status, 202);
      const second = await live.waitFor(
        (e) => e.event === 'message' && (e.data as { text: string }).text === 'second answer',
      );
      await live.waitFor(
        (e) =>
          e.event === 'status' &&
          (e.data as { working: boolean }).working === false &&
          Number(e.id) >= Number(second.id),
      );
      script.assertDone();
      const states = live.events.map((e) =>
        e.event === 'status' ? ((e.data as { working: boolean }).working ? 'working' : 'idle') : 'message',
      );
      const runs = app.orch.db.recentRuns(10);
      assert.deepEqual(
        runs.map((r) => [r.status, r.inputTokens, r.outputTokens]),
        [
          ['ok', 100, 20],
          ['ok', 100, 20],
        ],
        `the second turn has no run row (its tokens and cost are lost); status events: ${states.join(' ')}`,
      );
      assert.deepEqual(states, [
        'idle',
        'working',
        'message',
        'message',
        'idle',
        'working',
        'message',
        'idle',
      ]);
    } finally {
      live.close();
      await app.stop();
      removeHome(app.home);
    }
  });

  test('a reconnect that missed more than 1000 messages replays every one of them', async () => {
    // Nothing is scripted: the messages are committed and marked sent the way the outbox does it,
    // without an agent.
    const app = await startApp({ baseUrl: fake.script('replay', []).baseUrl });
    try {
      const db = app.orch.db;
      const missed = 1001;
      for (let i = 1; i <= missed; i++) {
        const id = db.enqueueReply({ chatJid: 'web:main', text: `missed ${i}`, now: Date.now() });
        db.markSent(id, String(id), Date.now());
      }
      const sse = await openEvents(app.port, '0');
      try {
        await afterReplay(sse);
        const texts = sse.messages().map((m) => m.text);
        assert.equal(texts.at(-1), `missed ${missed}`, 'the newest missed message was not replayed');
        assert.equal(texts.length, missed);
        // The status event after the replay claims the client is up to date with the newest id.
        assert.equal(sse.events.at(-1)?.id, String(db.latestOutboxId('web:main')));
      } finally {
        sse.close();
      }
    } finally {
      await app.stop();
      removeHome(app.home);
    }
  });
});

describe('configuration of the web chat', () => {
  test('a non-loopback WEB_HOST without WEB_TOKEN fails config with one line', () => {
    const home = tempHome();
    try {
      assert.throws(
        () => loadConfig({ NANOCLAW_HOME: home, WEB_HOST: '0.0.0.0' }, { root: projectRoot() }),
        (err: unknown) => {
          assert.ok(err instanceof ConfigError, `not a ConfigError: ${String(err)}`);
          assert.ok(!err.message.includes('\n'), `not one line: ${err.message}`);
          assert.match(err.message, /WEB_TOKEN/);
          assert.match(err.message, /WEB_HOST/);
          return true;
        },
      );
      const config = loadConfig(
        { NANOCLAW_HOME: home, WEB_HOST: '0.0.0.0', WEB_TOKEN: 'secret-token-123' },
        { root: projectRoot() },
      );
      assert.equal(config.webHost, '0.0.0.0');
      for (const host of ['127.0.0.1', 'localhost', '::1']) {
        assert.equal(
          loadConfig({ NANOCLAW_HOME: home, WEB_HOST: host }, { root: projectRoot() }).webHost,
          host,
        );
      }
    } finally {
      removeHome(home);
    }
  });
});

test('regression: stopping twice (a second signal) waits for the first stop instead of failing', async () => {
  const app = await startApp({ baseUrl: fake.script('twice', []).baseUrl });
  try {
    await Promise.all([app.orch.stop(2000), app.orch.stop(2000)]);
    await app.orch.stop(2000);
  } finally {
    removeHome(app.home);
  }
});

/** Listens on `port` and closes again: resolves only if nothing else holds it. */
function listenOnce(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const server = net.createServer().once('error', reject);
    server.listen(port, '127.0.0.1', () => server.close(() => resolve()));
  });
}

test('regression: a channel that fails to start leaves nothing running, and the error goes up', async () => {
  const home = tempHome();
  const probe = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => probe.once('listening', r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  const broken: Channel = {
    name: 'broken',
    owns: () => false,
    start: async () => {
      throw new ChannelError('broken: the platform refused the token');
    },
    stop: async () => {},
    close: async () => {},
    send: async () => ({}),
    setWorking: () => {},
  };
  try {
    const config = loadConfig(testEnv(home, fake.baseUrl, { WEB_PORT: String(port) }), {
      root: projectRoot(),
    });
    await assert.rejects(
      startOrchestrator(config, { log: createLogger('error', () => {}), channels: () => [broken] }),
      /the platform refused the token/,
    );
    // The web chat started before the broken channel: its port is free again.
    await listenOnce(port);
  } finally {
    removeHome(home);
  }
});
