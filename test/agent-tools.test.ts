// Who may use which of the agent's own tools: `authorize` is one pure function, so it is tested
// as a table of (caller, action, target) → allowed, or the exact one-line refusal.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type Action, authorize } from '../src/agent-tools.js';

const MAIN = { jid: 'web:main', folder: 'main', isMain: true };
const SALES = { jid: 'discord:1', folder: 'sales', isMain: false };
const OTHER_CHAT = 'discord:2';

type Caller = typeof MAIN | typeof SALES;
type Row = [
  caller: Caller,
  action: Action,
  target: { chat?: string; taskFolder?: string },
  expected?: string,
];

const ROWS: Row[] = [
  // send_message
  [SALES, 'send', { chat: SALES.jid }, undefined],
  [SALES, 'send', {}, undefined],
  [SALES, 'send', { chat: OTHER_CHAT }, 'only the main chat may send to another chat'],
  [SALES, 'send', { chat: MAIN.jid }, 'only the main chat may send to another chat'],
  [MAIN, 'send', { chat: MAIN.jid }, undefined],
  [MAIN, 'send', {}, undefined],
  [MAIN, 'send', { chat: OTHER_CHAT }, undefined],
  // schedule_task
  [SALES, 'schedule', { chat: SALES.jid }, undefined],
  [SALES, 'schedule', {}, undefined],
  [SALES, 'schedule', { chat: OTHER_CHAT }, 'only the main chat may schedule for another chat'],
  [MAIN, 'schedule', { chat: MAIN.jid }, undefined],
  [MAIN, 'schedule', {}, undefined],
  [MAIN, 'schedule', { chat: OTHER_CHAT }, undefined],
  // list_tasks (the handler narrows a non-main group to its own tasks)
  [SALES, 'list_tasks', {}, undefined],
  [MAIN, 'list_tasks', {}, undefined],
  // update/pause/resume/cancel_task
  [SALES, 'edit_task', { taskFolder: 'sales' }, undefined],
  [SALES, 'edit_task', { taskFolder: 'main' }, 'that task belongs to another group'],
  [SALES, 'edit_task', { taskFolder: 'family' }, 'that task belongs to another group'],
  [SALES, 'edit_task', {}, 'that task belongs to another group'],
  [MAIN, 'edit_task', { taskFolder: 'main' }, undefined],
  [MAIN, 'edit_task', { taskFolder: 'sales' }, undefined],
  // main-only tools
  [SALES, 'list_groups', {}, 'list groups is for the main chat only'],
  [SALES, 'register', {}, 'register is for the main chat only'],
  [SALES, 'unregister', {}, 'unregister is for the main chat only'],
  [SALES, 'register', { chat: SALES.jid }, 'register is for the main chat only'],
  [SALES, 'unregister', { chat: SALES.jid }, 'unregister is for the main chat only'],
  [MAIN, 'list_groups', {}, undefined],
  [MAIN, 'register', { chat: OTHER_CHAT }, undefined],
  [MAIN, 'unregister', { chat: OTHER_CHAT }, undefined],
];

const label = ([caller, action, target]: Row): string =>
  `${caller.isMain ? 'main' : 'non-main'} ${action} ${JSON.stringify(target)}`;

describe('authorize', () => {
  test('each caller, action and target is allowed or refused exactly as the table says', () => {
    const actual = ROWS.map((row) => [label(row), authorize(row[0], row[1], row[2])]);
    const expected = ROWS.map((row) => [label(row), row[3]]);
    assert.deepEqual(actual, expected);
  });

  test('the table covers every action for a non-main and a main caller', () => {
    const actions: Action[] = [
      'send',
      'schedule',
      'list_tasks',
      'edit_task',
      'list_groups',
      'register',
      'unregister',
    ];
    for (const action of actions) {
      assert.ok(
        ROWS.some(([caller, a]) => !caller.isMain && a === action),
        `${action} by a non-main caller is missing from the table`,
      );
      assert.ok(
        ROWS.some(([caller, a]) => caller.isMain && a === action),
        `${action} by the main chat is missing from the table`,
      );
    }
  });

  test('the target defaults to none: a non-main group may send and schedule in its own chat', () => {
    assert.equal(authorize(SALES, 'send'), undefined);
    assert.equal(authorize(SALES, 'schedule'), undefined);
    assert.equal(authorize(SALES, 'list_groups'), 'list groups is for the main chat only');
  });

  for (const row of ROWS.filter((r) => r[3] !== undefined)) {
    test(`the refusal for ${label(row)} is a single line`, () => {
      const why = authorize(row[0], row[1], row[2]);
      assert.equal(typeof why, 'string');
      assert.ok((why as string).length > 0);
      assert.doesNotMatch(why as string, /[\r\n]/);
      assert.equal((why as string).trim(), why);
    });
  }
});
