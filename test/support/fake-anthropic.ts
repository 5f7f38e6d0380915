/**
 * A scripted fake of the Anthropic Messages API, for tests that run the real Claude Agent SDK
 * (and its Claude Code CLI) with ANTHROPIC_BASE_URL pointing here. Plain node:http, no dependencies.
 *
 * Wire format, as the CLI speaks it (docs: research/agent-sdk.md §4–5):
 * - `POST …/v1/messages[?beta=true]` with a JSON body. With `stream: true` the answer is SSE, each event
 *   written as `event: NAME\ndata: {json}\n\n`, in this order: message_start (usage.input_tokens),
 *   ping, then per content block content_block_start, ≥2 content_block_delta (text_delta,
 *   input_json_delta, thinking_delta + signature_delta), content_block_stop; then message_delta
 *   ({stop_reason, stop_sequence}, usage) and message_stop. With `stream: false` it is one Message
 *   object. API errors are an HTTP status with `{type:'error', error:{type, message}}`.
 * - `POST …/v1/messages/count_tokens` → `{input_tokens}`; `HEAD /api/hello` → 200; anything else → 404.
 *
 * Requests are classified before any script is consulted, so tests script only the main agent loop:
 * - 'webfetch': WebFetch's summarising request (first user text starts with "\nWeb page content:"),
 *   answered with the page content itself.
 * - 'side': `tools: []` or `output_config.format` (e.g. session titles), answered with JSON matching a
 *   json_schema format, else a short text.
 * - 'subagent': the system billing block has `cc_is_subagent=true`; answered 'ok' unless the script has
 *   subagent steps.
 * - 'main': everything else. `<task-notification>` turns are answered 'noted'; the rest take the next
 *   step of the routed script.
 * A request nobody scripted gets a 200 `FAKE: unscripted request #n` with end_turn and is recorded in
 * `errors`: a 400 or 5xx would make the CLI retry (stripping betas on a 400) instead of failing loudly.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export type RequestKind = 'main' | 'side' | 'subagent' | 'webfetch' | 'other';

export interface ToolResult {
  tool_use_id: string;
  content: string;
  is_error?: boolean;
  /** Name of the tool_use this result answers, looked up in the request's assistant messages. */
  toolName?: string;
}

export interface RecordedRequest {
  /** 1-based position in `fake.requests`. */
  n: number;
  /** Script key the request was routed to; '' until routed, and for requests that are not messages. */
  key: string;
  method: string;
  url: string;
  headers: Record<string, string>;
  /** Parsed JSON body; the raw string when it is not JSON; undefined when empty. */
  body: unknown;
  kind: RequestKind;
  apiKey(): string | undefined;
  sessionId(): string | undefined;
  betas(): string[];
  model(): string | undefined;
  messages(): Array<{ role: string; content: unknown }>;
  /** Text blocks of the user messages after the last assistant message (the new turn), joined by '\n'. */
  lastUserText(): string;
  /** Text of the first user message. */
  firstUserText(): string;
  systemText(): string;
  /** tool_result blocks in the user messages after the last assistant message. */
  toolResults(): ToolResult[];
  toolsOffered(): string[];
}

export type Block =
  | { type: 'text'; text: string }
  | { type: 'tool_use'; name: string; input: unknown; id?: string }
  | { type: 'thinking'; thinking: string };

export interface Usage {
  input_tokens: number;
  output_tokens: number;
}

export type Reply =
  | { type: 'message'; blocks: Block[]; usage?: Usage; delayMs?: number; betweenBlocksMs?: number }
  | { type: 'http_error'; status: number; errorType: string; message?: string }
  | { type: 'hang' };

export type Step = {
  when?: Matcher;
  reply: Reply | ((req: RecordedRequest) => Reply | Promise<Reply>);
};

export interface Script {
  key: string;
  /** `fake.baseUrl/s/KEY`: requests under it reach this script when no custom route() is given. */
  baseUrl: string;
  /** Every messages request routed here (side and subagent requests included), in order. */
  requests: RecordedRequest[];
  errors: string[];
  /** Throws with the request log when steps remain or this script (or an unroutable request) erred. */
  assertDone(): void;
  pending(): number;
}

export interface ScriptOptions {
  /** Steps for subagent requests routed to this key; without them subagents are answered 'ok'. */
  subagent?: Step[];
}

export interface FakeAnthropic {
  baseUrl: string;
  requests: RecordedRequest[];
  errors: string[];
  /** Creates the queue for `key`, or appends to it when it exists. */
  script(key: string, steps: Step[], opts?: ScriptOptions): Script;
  close(): Promise<void>;
}

export interface FakeAnthropicOptions {
  /** Picks the script key. Default: KEY from a `/s/KEY/` path prefix, else 'default'. */
  route?: (req: RecordedRequest) => string;
  maxRequestsPerScript?: number;
}

export interface MessageOptions {
  usage?: Usage;
  delayMs?: number;
  betweenBlocksMs?: number;
  /** A thinking block placed before the other blocks. */
  thinking?: string;
}

export interface ToolCall {
  name: string;
  input: unknown;
  id?: string;
}

const DEFAULT_USAGE: Usage = { input_tokens: 100, output_tokens: 20 };
const DEFAULT_CAP = 25;

// ---- reply builders and matchers ----

export function message(blocks: Block[], opts: MessageOptions = {}): Reply {
  const { thinking, ...rest } = opts;
  const all: Block[] = thinking === undefined ? blocks : [{ type: 'thinking', thinking }, ...blocks];
  return { type: 'message', blocks: all, ...rest };
}

export const text = (t: string, opts?: MessageOptions): Reply => message([{ type: 'text', text: t }], opts);

export const toolUse = (
  name: string,
  input: unknown,
  opts: MessageOptions & { id?: string; text?: string } = {},
): Reply => {
  const { id, text: preamble, ...rest } = opts;
  return toolUses([{ name, input, ...(id === undefined ? {} : { id }) }], { ...rest, text: preamble });
};

/** Parallel tool calls in one assistant message, optionally after a line of text. */
export const toolUses = (
  calls: ToolCall[],
  opts: MessageOptions & { text?: string | undefined } = {},
): Reply => {
  const { text: preamble, ...rest } = opts;
  const blocks: Block[] = calls.map((c) => ({ type: 'tool_use', ...c }));
  return message(preamble === undefined ? blocks : [{ type: 'text', text: preamble }, ...blocks], rest);
};

export const httpError = (status: number, errorType: string, msg?: string): Reply => ({
  type: 'http_error',
  status,
  errorType,
  ...(msg === undefined ? {} : { message: msg }),
});

/** Never answers; the connection is destroyed by close(). Pair with an abort or API_TIMEOUT_MS. */
export const hang = (): Reply => ({ type: 'hang' });

export type Matcher = (req: RecordedRequest) => boolean;

export function any(): Matcher {
  return () => true;
}

/** Tests the new user turn's text; prompts arrive among <system-reminder> blocks, so match loosely. */
export function userText(re: RegExp): Matcher {
  return (req) => re.test(req.lastUserText());
}

/** Matches when the request carries a tool_result (for `toolName`, if given). */
export function toolResult(toolName?: string): Matcher {
  return (req) => req.toolResults().some((r) => toolName === undefined || r.toolName === toolName);
}

/**
 * The CLI lists MCP tools and some built-ins (WebFetch, …) as deferred, names only: a model has to
 * load a schema with ToolSearch `select:NAME` before calling the tool. These two steps do that, then
 * call the tool with `input` once the ToolSearch result is back.
 */
export function deferredToolCall(name: string, input: unknown): Step[] {
  return [
    { reply: toolUse('ToolSearch', { query: `select:${name}`, max_results: 1 }) },
    { when: toolResult('ToolSearch'), reply: toolUse(name, input) },
  ];
}

/** deferredToolCall for the in-process or external MCP tool `mcp__SERVER__TOOL`. */
export function mcpCall(server: string, tool: string, input: unknown): Step[] {
  return deferredToolCall(`mcp__${server}__${tool}`, input);
}

/** The full `options.env` for query() against this fake (research §3): it replaces process.env. */
export function agentEnv(opts: {
  baseUrl: string;
  home: string;
  tmp: string;
  extra?: Record<string, string>;
}): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: opts.home,
    CLAUDE_CONFIG_DIR: `${opts.home}/.claude`,
    CLAUDE_CODE_TMPDIR: opts.tmp,
    TMPDIR: opts.tmp,
    ANTHROPIC_BASE_URL: opts.baseUrl,
    ANTHROPIC_API_KEY: 'test-key',
    // The one that keeps the CLI off api.anthropic.com (no DNS, no title request, no /api/hello).
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
    DISABLE_TELEMETRY: '1',
    DISABLE_AUTOUPDATER: '1',
    // Default is 10 retries with backoff (~3 min per failing request).
    CLAUDE_CODE_MAX_RETRIES: '0',
    // bypassPermissions is refused as root without it.
    IS_SANDBOX: '1',
    ...opts.extra,
  };
}

// ---- request parsing ----

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function field(v: unknown, key: string): unknown {
  return isRecord(v) ? v[key] : undefined;
}

function blocksOf(content: unknown): Record<string, unknown>[] {
  if (typeof content === 'string') return [{ type: 'text', text: content }];
  return Array.isArray(content) ? content.filter(isRecord) : [];
}

function textOf(content: unknown): string {
  return blocksOf(content)
    .map((b) => (b.type === 'text' && typeof b.text === 'string' ? b.text : undefined))
    .filter((t) => t !== undefined)
    .join('\n');
}

/** tool_result content is a string or blocks; ToolSearch answers with tool_reference blocks. */
function flattenToolResult(content: unknown): string {
  if (typeof content === 'string') return content;
  return blocksOf(content)
    .map((b) => {
      if (b.type === 'text' && typeof b.text === 'string') return b.text;
      if (b.type === 'tool_reference' && typeof b.tool_name === 'string') return b.tool_name;
      return JSON.stringify(b);
    })
    .join('\n');
}

class Recorded implements RecordedRequest {
  key = '';
  /** What route() asked for when that script did not exist and 'default' took the request. */
  wantedKey: string | undefined;
  kind: RequestKind = 'other';

  constructor(
    readonly n: number,
    readonly method: string,
    readonly url: string,
    readonly headers: Record<string, string>,
    readonly body: unknown,
  ) {}

  apiKey(): string | undefined {
    const bearer = this.headers.authorization?.match(/^Bearer (.+)$/i)?.[1];
    return this.headers['x-api-key'] ?? bearer;
  }

  sessionId(): string | undefined {
    return this.headers['x-claude-code-session-id'];
  }

  betas(): string[] {
    return (this.headers['anthropic-beta'] ?? '').split(',').filter((b) => b !== '');
  }

  model(): string | undefined {
    const model = field(this.body, 'model');
    return typeof model === 'string' ? model : undefined;
  }

  messages(): Array<{ role: string; content: unknown }> {
    const list = field(this.body, 'messages');
    if (!Array.isArray(list)) return [];
    return list.filter(isRecord).map((m) => ({ role: String(m.role), content: m.content }));
  }

  /** User messages since the last assistant one; `messages` may also hold role 'system' entries. */
  private newTurn(): Array<{ role: string; content: unknown }> {
    const all = this.messages();
    const lastAssistant = all.map((m) => m.role).lastIndexOf('assistant');
    return all.slice(lastAssistant + 1).filter((m) => m.role === 'user');
  }

  lastUserText(): string {
    return this.newTurn()
      .map((m) => textOf(m.content))
      .filter((t) => t !== '')
      .join('\n');
  }

  firstUserText(): string {
    const first = this.messages().find((m) => m.role === 'user');
    return first === undefined ? '' : textOf(first.content);
  }

  systemText(): string {
    return textOf(field(this.body, 'system'));
  }

  toolResults(): ToolResult[] {
    const names = new Map<string, string>();
    for (const m of this.messages()) {
      if (m.role !== 'assistant') continue;
      for (const b of blocksOf(m.content)) {
        if (b.type === 'tool_use' && typeof b.id === 'string') names.set(b.id, String(b.name));
      }
    }
    return this.newTurn().flatMap((m) =>
      blocksOf(m.content)
        .filter((b) => b.type === 'tool_result')
        .map((b): ToolResult => {
          const id = String(b.tool_use_id);
          const toolName = names.get(id);
          return {
            tool_use_id: id,
            content: flattenToolResult(b.content),
            ...(b.is_error === true ? { is_error: true } : {}),
            ...(toolName === undefined ? {} : { toolName }),
          };
        }),
    );
  }

  toolsOffered(): string[] {
    const tools = field(this.body, 'tools');
    if (!Array.isArray(tools)) return [];
    return tools.map((t) => field(t, 'name')).filter((n): n is string => typeof n === 'string');
  }
}

function classify(req: Recorded): RequestKind {
  const tools = field(req.body, 'tools');
  if (req.firstUserText().startsWith('\nWeb page content:')) return 'webfetch';
  if ((Array.isArray(tools) && tools.length === 0) || field(field(req.body, 'output_config'), 'format')) {
    return 'side';
  }
  if (req.systemText().includes('cc_is_subagent=true')) return 'subagent';
  return 'main';
}

function defaultRoute(req: RecordedRequest): string {
  const key = new URL(req.url, 'http://fake').pathname.match(/^\/s\/([^/]+)\//)?.[1];
  return key === undefined ? 'default' : decodeURIComponent(key);
}

/** The page text between the `---` lines of WebFetch's prompt; the last `---` closes it. */
function webPageContent(req: RecordedRequest): string {
  const first = req.firstUserText();
  const start = first.indexOf('---\n') + 4;
  const end = first.lastIndexOf('\n---\n');
  return end > start ? first.slice(start, end) : first;
}

/** A value satisfying the JSON schema well enough for the CLI's structured side requests. */
function sampleFromSchema(schema: unknown): unknown {
  if (!isRecord(schema)) return 'Test title';
  if (Array.isArray(schema.enum) && schema.enum.length > 0) return schema.enum[0];
  if ('const' in schema) return schema.const;
  const alternatives = schema.anyOf ?? schema.oneOf;
  if (Array.isArray(alternatives) && alternatives.length > 0) return sampleFromSchema(alternatives[0]);
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  switch (type) {
    case 'object': {
      const props = isRecord(schema.properties) ? schema.properties : {};
      return Object.fromEntries(Object.entries(props).map(([k, v]) => [k, sampleFromSchema(v)]));
    }
    case 'array':
      return typeof schema.minItems === 'number' && schema.minItems > 0
        ? [sampleFromSchema(schema.items)]
        : [];
    case 'number':
    case 'integer':
      return 1;
    case 'boolean':
      return true;
    case 'null':
      return null;
    default:
      return 'Test title';
  }
}

function sideReply(req: RecordedRequest): Reply {
  const format = field(field(req.body, 'output_config'), 'format');
  if (field(format, 'type') === 'json_schema') {
    return text(JSON.stringify(sampleFromSchema(field(format, 'schema'))));
  }
  return text('Fake side reply.');
}

/** Drops the CLI's <system-reminder> boilerplate so the log shows what the turn is about. */
function oneLine(s: string, max = 120): string {
  const flat = s
    .replace(/<system-reminder>[\s\S]*?<\/system-reminder>/g, '')
    .replace(/\s+/g, ' ')
    .trim();
  return JSON.stringify(flat.length > max ? `${flat.slice(0, max)}…` : flat);
}

function describe(req: RecordedRequest): string {
  const tools = req.toolResults().map((r) => r.toolName ?? r.tool_use_id);
  const wanted = req instanceof Recorded ? req.wantedKey : undefined;
  return [
    `#${req.n} ${req.method} ${req.url} ${req.kind}`,
    wanted === undefined ? '' : `(route gave unknown script '${wanted}')`,
    req.model() === undefined ? '' : `model=${req.model()}`,
    `messages=${req.messages().length}`,
    tools.length > 0 ? `tool_results=[${tools.join(',')}]` : '',
    `last user: ${oneLine(req.lastUserText())}`,
  ]
    .filter((p) => p !== '')
    .join(' ');
}

// ---- response writing ----

/** At least two chunks when possible, so the CLI's delta reassembly is exercised. */
function split(s: string): string[] {
  if (s.length < 2) return [s];
  const mid = Math.ceil(s.length / 2);
  return [s.slice(0, mid), s.slice(mid)];
}

type Rendered =
  | { type: 'text'; text: string }
  | { type: 'tool_use'; id: string; name: string; input: unknown }
  | { type: 'thinking'; thinking: string; signature: string };

interface Writer {
  res: ServerResponse;
  signal: AbortSignal;
}

class FakeServer implements FakeAnthropic {
  baseUrl = '';
  readonly requests: RecordedRequest[] = [];
  readonly errors: string[] = [];
  private readonly scripts = new Map<string, ScriptState>();
  private readonly closing = new AbortController();
  private readonly server = createServer((req, res) => void this.handle(req, res));
  private ids = 0;

  constructor(
    private readonly route: (req: RecordedRequest) => string,
    private readonly cap: number,
  ) {}

  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => resolve());
    });
    const { port } = this.server.address() as AddressInfo;
    this.baseUrl = `http://127.0.0.1:${port}`;
  }

  script(key: string, steps: Step[], opts: ScriptOptions = {}): Script {
    return this.scriptState(key, steps, opts);
  }

  private scriptState(key: string, steps: Step[], opts: ScriptOptions = {}): ScriptState {
    const existing = this.scripts.get(key);
    if (existing !== undefined) {
      existing.steps.push(...steps);
      existing.subagentSteps.push(...(opts.subagent ?? []));
      return existing;
    }
    const base = key === 'default' ? this.baseUrl : `${this.baseUrl}/s/${encodeURIComponent(key)}`;
    const state = new ScriptState(key, base, [...steps], [...(opts.subagent ?? [])], this.errors);
    this.scripts.set(key, state);
    return state;
  }

  async close(): Promise<void> {
    this.closing.abort();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    // Hanging replies and the CLI's keep-alive sockets would otherwise hold close() open.
    this.server.closeAllConnections();
    await closed;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const w: Writer = { res, signal: this.closing.signal };
    try {
      const rec = await this.record(req);
      const path = new URL(rec.url, 'http://fake').pathname;
      if (path.endsWith('/api/hello') && (rec.method === 'HEAD' || rec.method === 'GET')) {
        res.writeHead(200).end();
      } else if (rec.method === 'POST' && path.endsWith('/v1/messages/count_tokens')) {
        writeJson(res, 200, { input_tokens: 1 });
      } else if (rec.method === 'POST' && path.endsWith('/v1/messages')) {
        await this.answerMessages(rec, w);
      } else {
        this.errors.push(`unknown route: ${describe(rec)}`);
        writeJson(res, 404, { type: 'error', error: { type: 'not_found_error', message: 'fake: no route' } });
      }
    } catch (err) {
      // close() aborts pending delays and destroys sockets mid-reply: nothing is left to answer.
      if (this.closing.signal.aborted || res.destroyed) return;
      this.errors.push(`fake failed on ${req.method} ${req.url}: ${String(err)}`);
      if (res.headersSent) {
        res.destroy();
      } else {
        writeJson(res, 500, { type: 'error', error: { type: 'api_error', message: 'fake' } });
      }
    }
  }

  private async record(req: IncomingMessage): Promise<Recorded> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    let body: unknown = raw === '' ? undefined : raw;
    try {
      if (raw !== '') body = JSON.parse(raw);
    } catch {
      // Not JSON: keep the raw text so the log shows what arrived.
    }
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
    }
    const rec = new Recorded(this.requests.length + 1, req.method ?? '', req.url ?? '', headers, body);
    this.requests.push(rec);
    return rec;
  }

  private async answerMessages(rec: Recorded, w: Writer): Promise<void> {
    rec.kind = classify(rec);
    const wanted = this.route(rec);
    const script = this.scripts.get(wanted) ?? this.scripts.get('default') ?? this.scriptState('default', []);
    rec.key = script.key;
    if (wanted !== script.key) rec.wantedKey = wanted;
    script.requests.push(rec);
    const reply = await this.chooseReply(rec, script);
    await this.send(rec, reply, w);
  }

  private async chooseReply(rec: Recorded, script: ScriptState): Promise<Reply> {
    if (rec.kind === 'webfetch') return text(webPageContent(rec));
    if (rec.kind === 'side') return sideReply(rec);
    script.counted += 1;
    if (script.counted > this.cap) {
      return script.unscripted(rec, `more than ${this.cap} requests for script '${script.key}'`);
    }
    if (rec.kind === 'subagent' && script.subagentSteps.length === 0) return text('ok');
    // Background tasks report back with a new user turn after the result; answering it with
    // scripted steps is how a fake loops forever (research §8.6).
    if (rec.kind === 'main' && rec.lastUserText().includes('<task-notification>')) return text('noted');
    return script.take(rec, rec.kind === 'subagent' ? script.subagentSteps : script.steps);
  }

  private async send(rec: Recorded, reply: Reply, w: Writer): Promise<void> {
    if (reply.type === 'hang') return;
    if (reply.type === 'http_error') {
      const message = reply.message ?? `fake ${reply.errorType}`;
      writeJson(w.res, reply.status, { type: 'error', error: { type: reply.errorType, message } });
      return;
    }
    if (reply.delayMs !== undefined) await sleep(reply.delayMs, undefined, { signal: w.signal });
    // The CLI may have given up (abort, timeout) while we waited.
    if (w.res.destroyed) return;
    const id = ++this.ids;
    const content: Rendered[] = reply.blocks.map((b, i) => {
      if (b.type === 'tool_use') {
        return { type: 'tool_use', id: b.id ?? `toolu_fake_${id}_${i}`, name: b.name, input: b.input ?? {} };
      }
      if (b.type === 'thinking') return { type: 'thinking', thinking: b.thinking, signature: 'fake-sig' };
      return b;
    });
    const msg = {
      id: `msg_fake_${id}`,
      type: 'message',
      role: 'assistant',
      model: rec.model() ?? 'claude-fake',
      content,
      stop_reason: content.some((b) => b.type === 'tool_use') ? 'tool_use' : 'end_turn',
      stop_sequence: null,
      usage: {
        ...(reply.usage ?? DEFAULT_USAGE),
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0,
      },
    };
    if (field(rec.body, 'stream') !== true) {
      writeJson(w.res, 200, msg, { 'request-id': `req_fake_${id}` });
      return;
    }
    await writeSse(w, msg, reply.betweenBlocksMs ?? 0);
  }
}

class ScriptState implements Script {
  readonly requests: RecordedRequest[] = [];
  readonly errors: string[] = [];
  counted = 0;

  constructor(
    readonly key: string,
    readonly baseUrl: string,
    readonly steps: Step[],
    readonly subagentSteps: Step[],
    private readonly allErrors: string[],
  ) {}

  pending(): number {
    return this.steps.length + this.subagentSteps.length;
  }

  unscripted(req: RecordedRequest, reason: string): Reply {
    const where = `script '${this.key}', ${req.kind}`;
    const error = `unscripted request #${req.n} (${where}): ${reason}; ${describe(req)}`;
    this.errors.push(error);
    this.allErrors.push(error);
    return text(`FAKE: unscripted request #${req.n}`);
  }

  async take(req: RecordedRequest, queue: Step[]): Promise<Reply> {
    const step = queue[0];
    if (step === undefined) return this.unscripted(req, 'no steps left');
    try {
      if (step.when !== undefined && !step.when(req)) {
        return this.unscripted(req, "next step's when() did not match");
      }
      queue.shift();
      return typeof step.reply === 'function' ? await step.reply(req) : step.reply;
    } catch (err) {
      return this.unscripted(req, `step threw: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  assertDone(): void {
    // Errors not tied to any script (unknown routes, fake crashes) fail every script's check.
    const foreign = this.allErrors.filter((e) => !e.startsWith('unscripted request #'));
    const errors = [...this.errors, ...foreign];
    if (this.pending() === 0 && errors.length === 0) return;
    const lines = [
      `fake-anthropic script '${this.key}': ${this.steps.length} step(s) and ` +
        `${this.subagentSteps.length} subagent step(s) left, ${errors.length} error(s)`,
      ...errors.map((e) => `  error: ${e}`),
      `  requests (${this.requests.length}):`,
      ...this.requests.map((r) => `    ${describe(r)}`),
    ];
    throw new Error(lines.join('\n'));
  }
}

function writeJson(
  res: ServerResponse,
  status: number,
  value: unknown,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(value));
}

async function writeSse(
  w: Writer,
  msg: { id: string; content: Rendered[]; usage: Usage & Record<string, number>; stop_reason: string },
  betweenBlocksMs: number,
): Promise<void> {
  const { res } = w;
  const event = (name: string, data: Record<string, unknown>): void => {
    if (!res.destroyed) res.write(`event: ${name}\ndata: ${JSON.stringify({ type: name, ...data })}\n\n`);
  };
  res.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-cache',
    'request-id': `req_${msg.id}`,
  });
  event('message_start', {
    message: { ...msg, content: [], stop_reason: null, usage: { ...msg.usage, output_tokens: 1 } },
  });
  event('ping', {});
  for (const [index, block] of msg.content.entries()) {
    if (index > 0 && betweenBlocksMs > 0) await sleep(betweenBlocksMs, undefined, { signal: w.signal });
    if (block.type === 'text') {
      event('content_block_start', { index, content_block: { type: 'text', text: '' } });
      for (const part of split(block.text)) {
        event('content_block_delta', { index, delta: { type: 'text_delta', text: part } });
      }
    } else if (block.type === 'tool_use') {
      event('content_block_start', { index, content_block: { ...block, input: {} } });
      for (const part of split(JSON.stringify(block.input))) {
        event('content_block_delta', { index, delta: { type: 'input_json_delta', partial_json: part } });
      }
    } else {
      event('content_block_start', {
        index,
        content_block: { type: 'thinking', thinking: '', signature: '' },
      });
      for (const part of split(block.thinking)) {
        event('content_block_delta', { index, delta: { type: 'thinking_delta', thinking: part } });
      }
      event('content_block_delta', { index, delta: { type: 'signature_delta', signature: block.signature } });
    }
    event('content_block_stop', { index });
  }
  event('message_delta', {
    delta: { stop_reason: msg.stop_reason, stop_sequence: null },
    usage: { output_tokens: msg.usage.output_tokens },
  });
  event('message_stop', {});
  res.end();
}

export async function startFakeAnthropic(opts: FakeAnthropicOptions = {}): Promise<FakeAnthropic> {
  const cap = opts.maxRequestsPerScript ?? DEFAULT_CAP;
  if (!Number.isInteger(cap) || cap < 1) {
    throw new TypeError(`maxRequestsPerScript must be an integer ≥ 1, got ${String(cap)}`);
  }
  const fake = new FakeServer(opts.route ?? defaultRoute, cap);
  await fake.listen();
  return fake;
}
