// The store on real SQLite: `:memory:` with the production migrations, and temp files where
// reopening matters.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { type Db, type NewMessage, openDb, SCHEMA_VERSION } from '../src/db.js';

const dirs: string[] = [];
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function tempStore(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-db-'));
  dirs.push(dir);
  return path.join(dir, 'store', 'messages.db');
}

function message(chatJid: string, platformId: string, extra: Partial<NewMessage> = {}): NewMessage {
  return {
    chatJid,
    platformId,
    sender: 'u1',
    senderName: 'Alice',
    text: `text of ${platformId}`,
    at: 1_000,
    isBot: false,
    fromMe: false,
    ...extra,
  };
}

/** An in-memory store, closed when the test ends. */
function memoryDb(t: { after(fn: () => void): void }): Db {
  const db = openDb(':memory:');
  t.after(() => db.close());
  return db;
}

const DISCORD = 'discord:111111';

function addDiscordGroup(db: Db, jid = DISCORD, folder = 'family', now = 5_000) {
  return db.addGroup(
    { jid, name: 'Family', folder, trigger: '@Krabby', requiresTrigger: true, isMain: false },
    now,
  );
}

describe('migrations', () => {
  test('a new store is migrated to the latest user_version', (t) => {
    const db = memoryDb(t);
    assert.equal(db.raw.pragma('user_version', { simple: true }), SCHEMA_VERSION);
  });

  test('reopening a file store is a no-op that keeps its data', () => {
    const file = tempStore();
    const first = openDb(file);
    assert.equal(first.raw.pragma('journal_mode', { simple: true }), 'wal');
    const { id } = first.insertMessage(message('web:main', 'p1'));
    addDiscordGroup(first);
    first.close();

    const second = openDb(file);
    try {
      assert.equal(second.raw.pragma('user_version', { simple: true }), SCHEMA_VERSION);
      assert.deepEqual(
        second.messagesAfter('web:main', 0).map((m) => m.id),
        [id],
      );
      assert.deepEqual(
        second
          .groups()
          .map((g) => g.jid)
          .sort(),
        [DISCORD, 'web:main'],
      );
    } finally {
      second.close();
    }
  });

  test('a store from a newer NanoClaw is refused with a clear message', () => {
    const file = tempStore();
    openDb(file).close();
    const raw = new Database(file);
    raw.pragma('user_version = 99');
    raw.close();
    assert.throws(
      () => openDb(file),
      new RegExp(
        `store schema version 99 is newer than this NanoClaw \\(${SCHEMA_VERSION}\\): upgrade NanoClaw`,
      ),
    );
  });
});

describe('groups', () => {
  test('web:main exists as the main group with folder main and no trigger', (t) => {
    const db = memoryDb(t);
    const main = db.group('web:main');
    assert.ok(main);
    assert.equal(main.folder, 'main');
    assert.equal(main.isMain, true);
    assert.equal(main.requiresTrigger, false);
    assert.equal(main.trigger, '');
    assert.equal(main.cursor, 0);
    assert.deepEqual(db.groupByFolder('main'), main);
    assert.deepEqual(db.groups(), [main]);
  });

  test('addGroup starts the cursor at the chat’s latest message', (t) => {
    const db = memoryDb(t);
    db.insertMessage(message(DISCORD, 'a'));
    const { id: latest } = db.insertMessage(message(DISCORD, 'b'));
    db.insertMessage(message('discord:other', 'c'));
    const group = addDiscordGroup(db);
    assert.equal(group.cursor, latest);
    assert.equal(group.createdAt, 5_000);
    assert.equal(group.requiresTrigger, true);
    assert.equal(group.isMain, false);
    assert.deepEqual(db.groupsWithUnprocessed(), []);
  });

  test('addGroup for a chat with no messages starts the cursor at 0', (t) => {
    const db = memoryDb(t);
    assert.equal(addDiscordGroup(db).cursor, 0);
  });

  test('folder uniqueness is enforced', (t) => {
    const db = memoryDb(t);
    addDiscordGroup(db, DISCORD, 'family');
    assert.throws(
      () => addDiscordGroup(db, 'discord:222222', 'family'),
      /UNIQUE constraint failed: groups\.folder/,
    );
    assert.throws(
      () => addDiscordGroup(db, 'discord:333333', 'main'),
      /UNIQUE constraint failed: groups\.folder/,
    );
    assert.equal(db.group('discord:222222'), undefined);
    assert.equal(db.groups().length, 2);
  });

  test('removeGroup removes a registered group and reports whether it existed', (t) => {
    const db = memoryDb(t);
    addDiscordGroup(db);
    assert.equal(db.removeGroup(DISCORD), true);
    assert.equal(db.removeGroup(DISCORD), false);
    assert.equal(db.group(DISCORD), undefined);
  });
});

describe('messages and cursors', () => {
  test('insertMessage is idempotent per chat and platform id', (t) => {
    const db = memoryDb(t);
    const first = db.insertMessage(message('web:main', 'p1'));
    assert.equal(first.inserted, true);
    const again = db.insertMessage(message('web:main', 'p1', { text: 'edited' }));
    assert.deepEqual(again, { id: first.id, inserted: false });
    const stored = db.messagesAfter('web:main', 0);
    assert.equal(stored.length, 1);
    assert.equal(stored[0]?.text, 'text of p1');
  });

  test('the same platform id in another chat is a different message', (t) => {
    const db = memoryDb(t);
    const a = db.insertMessage(message('web:main', 'p1'));
    const b = db.insertMessage(message(DISCORD, 'p1'));
    assert.equal(b.inserted, true);
    assert.notEqual(a.id, b.id);
    assert.equal(db.messagesAfter(DISCORD, 0).length, 1);
  });

  test('stored messages round-trip with their flags', (t) => {
    const db = memoryDb(t);
    const { id } = db.insertMessage(
      message(DISCORD, 'x', { isBot: true, fromMe: true, at: 42, text: 'hé 🦀' }),
    );
    assert.deepEqual(db.messagesAfter(DISCORD, 0), [
      {
        id,
        chatJid: DISCORD,
        platformId: 'x',
        sender: 'u1',
        senderName: 'Alice',
        text: 'hé 🦀',
        at: 42,
        isBot: true,
        fromMe: true,
        mayWake: true,
        mentionsMe: false,
        threadId: null,
        attachments: [],
      },
    ]);
    assert.equal(db.latestMessageId(DISCORD), id);
    assert.equal(db.latestMessageId('discord:none'), 0);
  });

  test('advanceCursor never moves backwards', (t) => {
    const db = memoryDb(t);
    db.advanceCursor('web:main', 10);
    db.advanceCursor('web:main', 3);
    assert.equal(db.group('web:main')?.cursor, 10);
    db.advanceCursor('web:main', 11);
    assert.equal(db.group('web:main')?.cursor, 11);
  });

  test('groupsWithUnprocessed lists exactly the groups with messages past their cursor, ignoring from_me', (t) => {
    const db = memoryDb(t);
    addDiscordGroup(db, DISCORD, 'family');
    addDiscordGroup(db, 'discord:222222', 'work');
    addDiscordGroup(db, 'discord:333333', 'quiet');
    assert.deepEqual(db.groupsWithUnprocessed(), []);

    const { id: webId } = db.insertMessage(message('web:main', 'w1'));
    db.insertMessage(message(DISCORD, 'f1'));
    db.insertMessage(message('discord:222222', 'own', { fromMe: true }));
    db.insertMessage(message('discord:unregistered', 'u1'));
    assert.deepEqual(db.groupsWithUnprocessed().sort(), [DISCORD, 'web:main']);

    db.advanceCursor('web:main', webId);
    assert.deepEqual(db.groupsWithUnprocessed(), [DISCORD]);

    db.insertMessage(message('discord:333333', 'bot', { isBot: true }));
    assert.deepEqual(db.groupsWithUnprocessed().sort(), [DISCORD, 'discord:333333']);
  });
});

describe('outbox', () => {
  test('enqueueReply with a cursor moves the cursor with the reply', (t) => {
    const db = memoryDb(t);
    const { id: msgId } = db.insertMessage(message('web:main', 'p1'));
    const id = db.enqueueReply({ chatJid: 'web:main', text: 'hello', cursor: msgId, now: 100 });
    assert.equal(db.group('web:main')?.cursor, msgId);
    assert.deepEqual(db.outboxRow(id), {
      id,
      chatJid: 'web:main',
      text: 'hello',
      sender: null,
      replyTo: null,
      threadId: null,
      file: null,
      status: 'pending',
      attempts: 0,
      nextAttemptAt: 100,
      createdAt: 100,
    });
  });

  test('enqueueReply without a cursor leaves the cursor alone', (t) => {
    const db = memoryDb(t);
    const { id: msgId } = db.insertMessage(message('web:main', 'p1'));
    db.enqueueReply({ chatJid: 'web:main', text: 'scheduled', sender: 'Krabby', replyTo: 'p1', now: 100 });
    assert.equal(db.group('web:main')?.cursor, 0);
    assert.ok(msgId > 0);
    const [row] = db.outboxDue(100);
    assert.equal(row?.sender, 'Krabby');
    assert.equal(row?.replyTo, 'p1');
  });

  test('an enqueueReply that fails on the insert leaves the cursor unchanged', (t) => {
    const db = memoryDb(t);
    const { id: msgId } = db.insertMessage(message('web:main', 'p1'));
    assert.throws(
      () =>
        db.enqueueReply({ chatJid: 'web:main', text: null as unknown as string, cursor: msgId, now: 100 }),
      /NOT NULL constraint failed: outbox\.text/,
    );
    assert.equal(db.group('web:main')?.cursor, 0);
    assert.equal(db.outboxPendingCount(), 0);
  });

  test('an enqueueReply that fails after the insert rolls the reply back too', (t) => {
    const db = memoryDb(t);
    db.insertMessage(message('web:main', 'p1'));
    // A cursor SQLite cannot bind fails on the cursor statement, after the reply row was inserted.
    assert.throws(() =>
      db.enqueueReply({
        chatJid: 'web:main',
        text: 'hi',
        cursor: Symbol('bad') as unknown as number,
        now: 100,
      }),
    );
    assert.equal(db.group('web:main')?.cursor, 0);
    assert.equal(db.outboxPendingCount(), 0);
    assert.deepEqual(db.outboxAfter('web:main', 0), []);
  });

  test('outboxDue returns pending rows whose time has come, in order', (t) => {
    const db = memoryDb(t);
    const a = db.enqueueReply({ chatJid: 'web:main', text: 'a', now: 100 });
    const b = db.enqueueReply({ chatJid: DISCORD, text: 'b', now: 200 });
    assert.deepEqual(db.outboxDue(99), []);
    assert.deepEqual(
      db.outboxDue(100).map((r) => r.id),
      [a],
    );
    assert.deepEqual(
      db.outboxDue(1_000).map((r) => r.id),
      [a, b],
    );
    assert.equal(db.outboxNextDue(), 100);
    assert.equal(db.outboxPendingCount(), 2);
  });

  test('markSent takes a row out of the due list and counts the attempt', (t) => {
    const db = memoryDb(t);
    const id = db.enqueueReply({ chatJid: 'web:main', text: 'a', now: 100 });
    assert.equal(db.latestOutboxId('web:main'), 0);
    db.markSent(id, 'platform-1', 150);
    assert.deepEqual(db.outboxDue(1_000), []);
    const row = db.outboxRow(id);
    assert.equal(row?.status, 'sent');
    assert.equal(row?.attempts, 1);
    assert.equal(db.latestOutboxId('web:main'), id);
    assert.equal(db.outboxNextDue(), undefined);
    assert.equal(db.outboxPendingCount(), 0);
  });

  test('markRetry reschedules a row, and a final retry marks it failed and no longer due', (t) => {
    const db = memoryDb(t);
    const id = db.enqueueReply({ chatJid: 'web:main', text: 'a', now: 100 });
    db.markRetry(id, 'HTTP 500', 500, false);
    assert.deepEqual(db.outboxDue(499), []);
    assert.deepEqual(
      db.outboxDue(500).map((r) => [r.id, r.status, r.attempts, r.nextAttemptAt]),
      [[id, 'pending', 1, 500]],
    );
    assert.equal(db.outboxNextDue(), 500);

    db.markRetry(id, 'HTTP 403', 900, true);
    assert.deepEqual(db.outboxDue(Number.MAX_SAFE_INTEGER), []);
    const row = db.outboxRow(id);
    assert.equal(row?.status, 'failed');
    assert.equal(row?.attempts, 2);
    assert.equal(db.outboxPendingCount(), 0);
    assert.equal(db.outboxNextDue(), undefined);
    assert.equal(db.latestOutboxId('web:main'), 0);
  });
});

describe('sessions and runs', () => {
  test('setSession keeps total_cost_usd for the same session id and resets it for a new one', (t) => {
    const db = memoryDb(t);
    assert.equal(db.session('main'), undefined);
    db.setSession('main', 'sess-1', 100);
    assert.deepEqual(db.session('main'), { id: 'sess-1', totalCostUsd: 0 });
    db.setSessionCost('main', 0.25);
    db.setSession('main', 'sess-1', 200);
    assert.deepEqual(db.session('main'), { id: 'sess-1', totalCostUsd: 0.25 });
    db.setSession('main', 'sess-2', 300);
    assert.deepEqual(db.session('main'), { id: 'sess-2', totalCostUsd: 0 });
    db.clearSession('main');
    assert.equal(db.session('main'), undefined);
  });

  test('abandonRuns closes running rows as errors and leaves finished ones alone', (t) => {
    const db = memoryDb(t);
    const done = db.startRun('main', 'web:main', 100);
    db.finishRun(done, {
      now: 150,
      status: 'ok',
      inputTokens: 10,
      outputTokens: 20,
      costUsd: 0.01,
      sessionId: 's',
    });
    const stuck = db.startRun('family', DISCORD, 200);
    db.abandonRuns(1_000);

    const runs = db.recentRuns();
    assert.deepEqual(
      runs.map((r) => r.id),
      [stuck, done],
    );
    const [abandoned, finished] = runs;
    assert.equal(abandoned?.status, 'error');
    assert.equal(abandoned?.endedAt, 1_000);
    assert.equal(abandoned?.error, 'orchestrator stopped');
    assert.equal(finished?.status, 'ok');
    assert.equal(finished?.endedAt, 150);
    assert.equal(finished?.error, null);
    assert.equal(finished?.costUsd, 0.01);
    assert.equal(finished?.outputTokens, 20);
  });
});

describe('discord columns', () => {
  test('wake flags, threads and attachments round-trip, and the newest message outside threads is found', (t) => {
    const db = memoryDb(t);
    db.insertMessage(message(DISCORD, '100'));
    db.insertMessage(
      message(DISCORD, '101', {
        mayWake: false,
        mentionsMe: true,
        threadId: 't1',
        attachments: ['/workspace/group/a'],
      }),
    );
    const [, second] = db.messagesAfter(DISCORD, 0);
    assert.equal(second?.mayWake, false);
    assert.equal(second?.mentionsMe, true);
    assert.equal(second?.threadId, 't1');
    assert.deepEqual(second?.attachments, ['/workspace/group/a']);
    assert.equal(db.lastPlatformId(DISCORD), '100');
    assert.equal(db.lastPlatformId('discord:none'), undefined);
  });
});
