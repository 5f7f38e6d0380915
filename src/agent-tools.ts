// The agent's own tools: one in-process MCP server named `nanoclaw`, made on the host for each
// agent session and bound to its group. The caller's identity is the session's group, never an
// argument. Who may do what is one pure function (`authorize`); main-only tools are not offered
// to other groups, and every handler asks `authorize` anyway. A refusal is a tool error with one
// line saying why, logged with the group.
import { lstatSync, realpathSync } from 'node:fs';
import path from 'node:path';
import type { createSdkMcpServer, tool } from '@anthropic-ai/claude-agent-sdk';
import { z } from 'zod';
import { type Db, type Group, planGroup } from './db.js';
import type { Logger } from './log.js';
import { GUEST } from './mounts.js';
import { describeSchedule, parseSchedule, type Task, type TaskStore } from './scheduler.js';

export type Action =
  | 'send'
  | 'schedule'
  | 'list_tasks'
  | 'edit_task'
  | 'list_groups'
  | 'register'
  | 'unregister';

/** May `caller` do `action` (on another chat, or on a task of `taskFolder`)? One line why not. */
export function authorize(
  caller: Pick<Group, 'jid' | 'folder' | 'isMain'>,
  action: Action,
  target: { chat?: string; taskFolder?: string } = {},
): string | undefined {
  if (caller.isMain) return undefined;
  switch (action) {
    case 'send':
    case 'schedule':
      return target.chat === undefined || target.chat === caller.jid
        ? undefined
        : `only the main chat may ${action === 'send' ? 'send to' : 'schedule for'} another chat`;
    case 'list_tasks':
      return undefined;
    case 'edit_task':
      return target.taskFolder === caller.folder ? undefined : 'that task belongs to another group';
    default:
      return `${action.replace('_', ' ')} is for the main chat only`;
  }
}

export interface ToolContext {
  group: Group;
  db: Db;
  tasks: TaskStore;
  log: Logger;
  now(): number;
  timezone: string;
  assistantName: string;
  groupsDir: string;
  /** The tasks changed: re-arm the scheduler. */
  scheduleChanged(): void;
  /** Something was committed to the outbox. */
  delivered(): void;
  /** A chat was registered: create its folder. */
  registered(g: Group): void;
}

type Result = { content: { type: 'text'; text: string }[]; isError?: boolean };
const ok = (text: string): Result => ({ content: [{ type: 'text', text }] });

function when(at: number | null, tz: string): string {
  if (at === null) return 'never';
  return `${new Date(at).toLocaleString('sv-SE', { timeZone: tz }).slice(0, 16)} ${tz}`;
}

function taskLine(t: Task): string {
  const prompt = t.prompt.length > 80 ? `${t.prompt.slice(0, 79)}…` : t.prompt;
  return `${t.id} [${t.status}] ${describeSchedule(t)}, next ${when(t.nextRun, t.timezone)}, group ${t.groupFolder}, chat ${t.chatJid}, ${t.contextMode} context: ${prompt}`;
}

const scheduleShape = {
  cron: z.string().optional().describe('cron expression, e.g. "0 9 * * 1-5" (weekdays at 9:00)'),
  every_ms: z.number().int().optional().describe('interval in milliseconds (at least 60000)'),
  at: z.string().optional().describe('one time, ISO 8601; without an offset it is read in the timezone'),
  timezone: z.string().optional().describe('IANA time zone; default the assistant’s'),
};

/** The `nanoclaw` MCP server for one session (the SDK's functions are passed in: it loads lazily). */
export function nanoclawServer(
  sdk: { createSdkMcpServer: typeof createSdkMcpServer; tool: typeof tool },
  ctx: ToolContext,
) {
  const me = ctx.group;
  const refuse = (why: string): Result => {
    ctx.log.warn(`group ${me.folder}: tool refused: ${why}`);
    return { ...ok(why), isError: true };
  };
  const registeredChat = (chat: string | undefined): Group | string =>
    ctx.db.group(chat ?? me.jid) ?? `chat ${chat} is not registered (list_groups shows the chats)`;
  // The host path of a real file in the group's folder, reached through no symlink at all (an
  // agent may plant `dir -> /etc`); undefined for anything else.
  const ownFile = (guestPath: string): string | undefined => {
    const rel = path.posix.relative(GUEST.group, path.posix.resolve(GUEST.group, guestPath));
    const file = path.join(ctx.groupsDir, me.folder, rel);
    try {
      return !rel.startsWith('..') && realpathSync(file) === file && lstatSync(file).isFile()
        ? file
        : undefined;
    } catch {
      return undefined; // missing
    }
  };
  const ownTask = (id: string): Task | string => {
    const t = ctx.tasks.get(id);
    if (!t || t.status === 'cancelled' || t.status === 'done') return `no task ${id} (list_tasks shows them)`;
    return authorize(me, 'edit_task', { taskFolder: t.groupFolder }) ?? t;
  };

  const tools = [
    sdk.tool(
      'send_message',
      'Send a message to a chat now (default: this chat), optionally under a sender name or with a file from your folder.',
      {
        text: z.string().min(1).max(40_000),
        sender: z.string().min(1).max(80).optional().describe('the name to speak under, e.g. a teammate'),
        chat: z.string().optional().describe('chat id; only the main chat may send elsewhere'),
        file: z.string().optional().describe(`a file in ${GUEST.group} to attach`),
      },
      async (a) => {
        const denied = authorize(me, 'send', { chat: a.chat });
        if (denied) return refuse(denied);
        const target = registeredChat(a.chat);
        if (typeof target === 'string') return refuse(target);
        const file = a.file === undefined ? undefined : ownFile(a.file);
        if (a.file !== undefined && !file) return refuse(`${a.file} is not a file in your folder`);
        ctx.db.enqueueReply({ chatJid: target.jid, text: a.text, sender: a.sender, file, now: ctx.now() });
        ctx.delivered();
        return ok(`sent to ${target.jid}`);
      },
    ),
    sdk.tool(
      'schedule_task',
      'Schedule a prompt to run later: with cron, every_ms or at (exactly one). Its answer goes to the chat.',
      {
        prompt: z.string().min(1).max(10_000),
        ...scheduleShape,
        context_mode: z
          .enum(['group', 'isolated'])
          .optional()
          .describe('group: in this chat’s conversation (default); isolated: a fresh session'),
        chat: z.string().optional().describe('chat id; only the main chat may schedule for another'),
      },
      async (a) => {
        const denied = authorize(me, 'schedule', { chat: a.chat });
        if (denied) return refuse(denied);
        const target = registeredChat(a.chat);
        if (typeof target === 'string') return refuse(target);
        const s = parseSchedule(a, ctx.timezone, ctx.now());
        if (typeof s === 'string') return refuse(s);
        const t = ctx.tasks.create(
          {
            groupFolder: target.folder,
            chatJid: target.jid,
            prompt: a.prompt,
            schedule: s.schedule,
            timezone: s.timezone,
            contextMode: a.context_mode ?? 'group',
            nextRun: s.nextRun,
          },
          ctx.now(),
        );
        ctx.scheduleChanged();
        return ok(
          `scheduled ${t.id}: ${describeSchedule(t)}, first run ${when(s.nextRun, s.timezone)}${s.note ? ` (${s.note})` : ''}`,
        );
      },
    ),
    sdk.tool('list_tasks', 'List scheduled tasks (the main chat sees every group’s).', {}, async () => {
      const list = ctx.tasks.list(me.isMain ? undefined : me.folder);
      return ok(list.length ? list.map(taskLine).join('\n') : 'no scheduled tasks');
    }),
    sdk.tool(
      'update_task',
      'Change a task’s prompt or schedule.',
      { task_id: z.string(), prompt: z.string().min(1).max(10_000).optional(), ...scheduleShape },
      async (a) => {
        const t = ownTask(a.task_id);
        if (typeof t === 'string') return refuse(t);
        const next: Task = { ...t, ...(a.prompt ? { prompt: a.prompt } : {}) };
        let note = '';
        const given = a.cron !== undefined || a.every_ms !== undefined || a.at !== undefined;
        if (given || a.timezone !== undefined) {
          const input = given ? a : { ...scheduleInput(t), ...(a.timezone ? { timezone: a.timezone } : {}) };
          const s = parseSchedule(input, ctx.timezone, ctx.now());
          if (typeof s === 'string') return refuse(s);
          Object.assign(next, { schedule: s.schedule, timezone: s.timezone, nextRun: s.nextRun });
          note = s.note ? ` (${s.note})` : '';
        }
        ctx.tasks.update(next);
        ctx.scheduleChanged();
        return ok(
          `updated ${t.id}: ${describeSchedule(next)}, next ${when(next.nextRun, next.timezone)}${note}`,
        );
      },
    ),
    ...(['pause_task', 'resume_task', 'cancel_task'] as const).map((name) =>
      sdk.tool(name, `${name.split('_')[0]} a scheduled task.`, { task_id: z.string() }, async (a) => {
        const t = ownTask(a.task_id);
        if (typeof t === 'string') return refuse(t);
        const done = ctx.tasks.change(t, name.split('_')[0] as 'pause' | 'resume' | 'cancel', ctx.now());
        if (!done.ok) return refuse(done.line);
        ctx.scheduleChanged();
        return ok(done.line);
      }),
    ),
  ];
  const mainTools = [
    sdk.tool('list_groups', 'Every chat the channels can see, registered or not.', {}, async () => {
      const denied = authorize(me, 'list_groups');
      if (denied) return refuse(denied);
      const lines = ctx.db.chats().map((c) => {
        const g = ctx.db.group(c.jid);
        return `${c.jid} "${c.name}" (${c.channel})${g ? ` registered as ${g.folder}${g.isMain ? ', main' : ''}` : ', not registered'}`;
      });
      return ok(lines.join('\n') || 'no chats seen yet');
    }),
    sdk.tool(
      'register_group',
      'Register a chat so the assistant answers there.',
      {
        chat: z.string(),
        name: z.string().min(1).max(100),
        folder: z.string().optional(),
        trigger: z.string().optional(),
        requires_trigger: z.boolean().optional(),
        main: z.boolean().optional(),
      },
      async (a) => {
        const denied = authorize(me, 'register');
        if (denied) return refuse(denied);
        const { requires_trigger: requiresTrigger, ...rest } = a;
        const plan = planGroup(ctx.db, { ...rest, requiresTrigger }, ctx.assistantName);
        if (typeof plan === 'string') return refuse(plan);
        const g = ctx.db.addGroup(plan, ctx.now());
        ctx.registered(g);
        return ok(`registered ${g.jid} as "${g.name}" in folder ${g.folder}`);
      },
    ),
    sdk.tool(
      'unregister_group',
      'Stop answering in a chat (its folder is kept).',
      { chat: z.string() },
      async (a) => {
        const denied = authorize(me, 'unregister');
        if (denied) return refuse(denied);
        if (a.chat === 'web:main') return refuse('web:main is always served');
        return ctx.db.removeGroup(a.chat)
          ? ok(`unregistered ${a.chat}`)
          : refuse(`chat ${a.chat} is not registered`);
      },
    ),
  ];
  return sdk.createSdkMcpServer({
    name: 'nanoclaw',
    version: '1.0.0',
    tools: me.isMain ? [...tools, ...mainTools] : tools,
  });
}

function scheduleInput(t: Task) {
  const s = t.schedule;
  return {
    timezone: t.timezone,
    ...(s.type === 'cron' ? { cron: s.value } : {}),
    ...(s.type === 'interval' ? { every_ms: s.value } : {}),
    ...(s.type === 'once' ? { at: new Date(s.value).toISOString() } : {}),
  };
}
