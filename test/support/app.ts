// Runs the real orchestrator (real SQLite, real bwrap, real Agent SDK) against the fake model,
// in-process, on a fresh NANOCLAW_HOME; plus small web-chat clients (POST and SSE).
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig, projectRoot } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { type Orchestrator, type OrchestratorDeps, startOrchestrator } from '../../src/orchestrator.js';
import { runtimeEnv } from '../../src/sandbox/container.js';
import type { FakeClock } from './clock.js';

/** The "real" model key: it must reach the fake, and never the sandbox. */
// Made at run time: main's sandbox sees the project's files, so the key must be in none of them.
export const REAL_KEY = `sk-ant-api03-CANARY-${randomBytes(16).toString('hex')}`;

export function tempHome(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-test-'));
}

/** The environment a test app runs with (what .env would hold), on top of `extra`. */
export function testEnv(
  home: string,
  baseUrl: string,
  extra: Record<string, string> = {},
  credential: 'api_key' | 'oauth' = 'api_key',
): Record<string, string> {
  return {
    NANOCLAW_HOME: home,
    ...(credential === 'oauth' ? { CLAUDE_CODE_OAUTH_TOKEN: REAL_KEY } : { ANTHROPIC_API_KEY: REAL_KEY }),
    ANTHROPIC_BASE_URL: baseUrl,
    SANDBOX: 'bwrap',
    WEB_PORT: '0',
    TIMEZONE: 'UTC',
    CLAUDE_CODE_MAX_RETRIES: '0',
    ...extra,
  };
}

export interface TestApp {
  home: string;
  orch: Orchestrator;
  port: number;
  logs: string[];
  post(text: string, id?: string): Promise<{ status: number; body: unknown }>;
  stop(): Promise<void>;
}

export async function startApp(opts: {
  baseUrl: string;
  /** The runtime (default bwrap). */
  sandbox?: string;
  home?: string;
  env?: Record<string, string>;
  retryBaseMs?: number;
  discord?: { typingIntervalMs?: number };
  credential?: 'api_key' | 'oauth';
  egress?: OrchestratorDeps['egress'];
  mountAllowlistPath?: string;
  /** A fake clock for `now` and the scheduler's timers. */
  clock?: FakeClock;
}): Promise<TestApp> {
  const home = opts.home ?? tempHome();
  const env = testEnv(
    home,
    opts.baseUrl,
    { ...(opts.sandbox ? { SANDBOX: opts.sandbox } : {}), ...opts.env },
    opts.credential,
  );
  const config = loadConfig(env, { root: projectRoot() });
  const logs: string[] = [];
  const log = createLogger('debug', (line) => logs.push(line));
  const orch = await startOrchestrator(config, {
    log,
    env: { ...runtimeEnv(process.env), PATH: process.env.PATH ?? '/usr/bin:/bin', ...env },
    ...(opts.retryBaseMs !== undefined ? { retryBaseMs: opts.retryBaseMs } : {}),
    ...(opts.discord ? { discord: opts.discord } : {}),
    ...(opts.egress ? { egress: opts.egress } : {}),
    ...(opts.mountAllowlistPath ? { mountAllowlistPath: opts.mountAllowlistPath } : {}),
    ...(opts.clock ? { now: opts.clock.now, schedulerTimers: opts.clock } : {}),
  });
  const port = orch.web.port();
  return {
    home,
    orch,
    port,
    logs,
    post: (text, id) => postJson(port, '/api/messages', id === undefined ? { text } : { text, id }),
    stop: () => orch.stop(5000),
  };
}

export function removeHome(home: string): void {
  rmSync(home, { recursive: true, force: true });
}

export async function postJson(
  port: number,
  route: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: unknown }> {
  const res = await request(port, 'POST', route, JSON.stringify(body), {
    'content-type': 'application/json',
    ...headers,
  });
  return { status: res.status, body: res.text ? JSON.parse(res.text) : undefined };
}

/** A raw request (Host and other headers under the test's control). */
export function request(
  port: number,
  method: string,
  route: string,
  body: string | undefined,
  headers: Record<string, string> = {},
): Promise<{ status: number; text: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, method, path: route, headers: { host: `127.0.0.1:${port}`, ...headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            text: Buffer.concat(chunks).toString('utf8'),
            headers: res.headers,
          }),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

export interface SseEvent {
  event: string;
  id: string;
  data: unknown;
}

/** A Server-Sent Events client for /api/events that records every event. */
export function openEvents(port: number, lastEventId?: string, query = ''): Promise<SseClient> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { host: `127.0.0.1:${port}`, accept: 'text/event-stream' };
    if (lastEventId !== undefined) headers['last-event-id'] = lastEventId;
    const req = http.get({ host: '127.0.0.1', port, path: `/api/events${query}`, headers }, (res) => {
      const client = new SseClient(req);
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => client.feed(chunk));
      resolve(client);
    });
    req.on('error', reject);
  });
}

export class SseClient {
  events: SseEvent[] = [];
  private buffer = '';
  private listeners = new Set<() => void>();

  constructor(private req: http.ClientRequest) {}

  feed(chunk: string): void {
    this.buffer += chunk;
    let end = this.buffer.indexOf('\n\n');
    while (end >= 0) {
      const raw = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const ev: SseEvent = { event: 'message', id: '', data: undefined };
      let data = '';
      for (const line of raw.split('\n')) {
        if (line.startsWith(':')) continue;
        const i = line.indexOf(':');
        const [k, v] = i < 0 ? [line, ''] : [line.slice(0, i), line.slice(i + 1).replace(/^ /, '')];
        if (k === 'event') ev.event = v;
        if (k === 'id') ev.id = v;
        if (k === 'data') data += v;
      }
      if (data !== '') {
        ev.data = JSON.parse(data);
        this.events.push(ev);
        for (const l of this.listeners) l();
      }
      end = this.buffer.indexOf('\n\n');
    }
  }

  messages(): Array<{ id: string; text: string; sender?: string }> {
    return this.events
      .filter((e) => e.event === 'message')
      .map((e) => e.data as { id: string; text: string });
  }

  /** Resolves with the first recorded event matching `pred` (waiting up to `ms`). */
  waitFor(pred: (e: SseEvent) => boolean, ms = 30_000): Promise<SseEvent> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const hit = this.events.find(pred);
        if (!hit) return false;
        cleanup();
        resolve(hit);
        return true;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new Error(`no matching SSE event in ${ms} ms; got ${JSON.stringify(this.events).slice(0, 2000)}`),
        );
      }, ms);
      const cleanup = () => {
        clearTimeout(timer);
        this.listeners.delete(listener);
      };
      const listener = () => void check();
      this.listeners.add(listener);
      check();
    });
  }

  close(): void {
    this.req.destroy();
  }
}

/** Polls `fn` until it returns a truthy value (used only to wait for effects, never to time them). */
export async function eventually<T>(
  fn: () => T | undefined | false,
  ms = 30_000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface AppProcess {
  child: import('node:child_process').ChildProcess;
  port: number;
  /** Everything it logged (stdout and stderr together). */
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** The compiled CLI (dist/src/cli.js), as users run it. */
export const CLI = fileURLToPath(new URL('../../src/cli.js', import.meta.url));

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the compiled `nanoclaw` bin as users do, with only PATH and NANOCLAW_HOME in its env. */
export function nanoclaw(home: string, ...args: string[]): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      {
        cwd: home,
        env: { PATH: process.env.PATH, NANOCLAW_HOME: home },
        timeout: 20_000,
        killSignal: 'SIGKILL',
        maxBuffer: 1024 * 1024,
      },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') return reject(err);
        resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
      },
    );
  });
}

/** Starts `nanoclaw start` as its own process and waits until the web chat listens. */
export async function spawnApp(home: string, env: Record<string, string>): Promise<AppProcess> {
  const child = spawn(process.execPath, [CLI, 'start'], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env, NANOCLAW_HOME: home },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // The log: information on stdout, warnings and errors on stderr, kept here as one.
  let err = '';
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding('utf8');
    stream.on('data', (d: string) => {
      err += d;
    });
  }
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const port = await Promise.race([
    eventually(() => Number(/web chat on http:\/\/[^:]+:(\d+)\//.exec(err)?.[1] ?? 0), 20_000, 'web chat'),
    exited.then(({ code }) => {
      throw new Error(`nanoclaw exited with ${code} before listening: ${err}`);
    }),
  ]);
  return { child, port, stderr: () => err, exited };
}
