// Protocol smoke tests: the real discord.js Client against test/support/fake-discord.ts. They fail loudly
// when a discord.js upgrade changes the handshake, the caching rules or the routes it calls.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, test } from 'node:test';
import {
  type APIMessage,
  ChannelType,
  Client,
  type ClientEvents,
  Events,
  GatewayIntentBits,
  GatewayOpcodes,
  type Message,
  Partials,
  PermissionFlagsBits,
  type RESTOptions,
  type TextChannel,
} from 'discord.js';
import { DEFAULT_BOT_PERMISSIONS, FakeDiscord } from './support/fake-discord.js';

const TOKEN = 'fake-token-1';
const INTENTS = [
  GatewayIntentBits.Guilds,
  GatewayIntentBits.GuildMessages,
  GatewayIntentBits.MessageContent,
  GatewayIntentBits.DirectMessages,
];

let fake: FakeDiscord;
let clients: Client[] = [];

beforeEach(async () => {
  fake = await FakeDiscord.start();
});

afterEach(async () => {
  await Promise.all(clients.map((c) => c.destroy()));
  clients = [];
  await fake.stop();
  assert.deepEqual(fake.unhandled, []);
});

function newClient(rest: Partial<RESTOptions> = {}): Client {
  const client = new Client({
    intents: INTENTS,
    partials: [Partials.Channel],
    rest: { api: fake.api, ...rest },
    waitGuildTimeout: 200,
  });
  clients.push(client);
  return client;
}

/** Resolves on clientReady, which is attached before login() (login resolves earlier, on READY). */
async function ready(client: Client, token = TOKEN): Promise<Client<true>> {
  const isReady = new Promise<void>((resolve) => client.once(Events.ClientReady, () => resolve()));
  await client.login(token);
  await isReady;
  assert.ok(client.isReady());
  return client;
}

/** The next `event` whose args match, or a rejection after `ms` (unref'd timer). */
function nextEvent<E extends keyof ClientEvents>(
  client: Client,
  event: E,
  pred: (...args: ClientEvents[E]) => boolean = () => true,
  ms = 5_000,
): Promise<ClientEvents[E]> {
  return new Promise((resolve, reject) => {
    const listener = (...args: ClientEvents[E]) => {
      if (!pred(...args)) return;
      clearTimeout(timer);
      client.off(event, listener);
      resolve(args);
    };
    const timer = setTimeout(() => {
      client.off(event, listener);
      reject(new Error(`no ${String(event)} within ${ms} ms`));
    }, ms);
    timer.unref();
    client.on(event, listener);
  });
}

async function nextMessage(client: Client, content: string, ms?: number): Promise<Message> {
  const [msg] = await nextEvent(client, Events.MessageCreate, (m) => m.content === content, ms);
  return msg;
}

/** A bot, a user, a guild with #general and a thread under it. */
function world() {
  const bot = fake.addBot(TOKEN, 'claw');
  const alice = fake.addUser('alice');
  const guild = fake.addGuild('home');
  const general = fake.addTextChannel(guild.id, 'general');
  const thread = fake.addThread(general.id, 'side quest');
  return { bot, alice, guild, general, thread };
}

function textChannel(client: Client<true>, id: string): TextChannel {
  const ch = client.channels.cache.get(id);
  assert.equal(ch?.type, ChannelType.GuildText);
  return ch as TextChannel;
}

const postsTo = (channelId: string) =>
  fake.requests.filter((r) => r.method === 'POST' && r.path === `/channels/${channelId}/messages`);

test('logs in with one REST call and is ready with guilds, channels and threads cached', async () => {
  const { bot, guild, general, thread } = world();
  const client = await ready(newClient());
  assert.equal(client.user.id, bot.id);
  assert.equal(client.user.username, 'claw');
  assert.deepEqual(
    fake.requests.map((r) => `${r.method} ${r.path}`),
    ['GET /gateway/bot'],
  );
  const identify = fake.gatewayReceived.find((f) => f.op === GatewayOpcodes.Identify)?.d;
  assert.equal((identify as { intents?: number } | undefined)?.intents, 37377);
  assert.equal(client.guilds.cache.get(guild.id)?.name, 'home');
  const me = client.guilds.cache.get(guild.id)?.members.me;
  assert.ok(me?.permissions.has(PermissionFlagsBits.ManageWebhooks));
  assert.equal(me?.permissions.bitfield, DEFAULT_BOT_PERMISSIONS);
  assert.equal(textChannel(client, general.id).name, 'general');
  const cachedThread = client.channels.cache.get(thread.id);
  assert.ok(cachedThread?.isThread());
  assert.equal(cachedThread.parentId, general.id);
});

test('delivers guild, DM and thread messages as messageCreate', async () => {
  const { bot, alice, guild, general, thread } = world();
  const dm = fake.addDM(alice);
  const client = await ready(newClient());

  const inGuild = nextMessage(client, `<@${bot.id}> hello`);
  fake.injectMessage({ channelId: general.id, author: alice, content: `<@${bot.id}> hello` });
  const g = await inGuild;
  assert.equal(g.channelId, general.id);
  assert.equal(g.guildId, guild.id);
  assert.equal(g.author.username, 'alice');
  assert.ok(g.member);
  assert.ok(g.mentions.has(client.user));

  const inDM = nextMessage(client, 'psst');
  fake.injectMessage({ channelId: dm.id, author: alice, content: 'psst' });
  const d = await inDM;
  assert.equal(d.channel.type, ChannelType.DM);
  assert.equal(d.guildId, null);

  const inThread = nextMessage(client, 'in the thread');
  fake.injectMessage({ channelId: thread.id, author: alice, content: 'in the thread' });
  const t = await inThread;
  assert.ok(t.channel.isThread());
  assert.equal(t.channel.parentId, general.id);

  const reply = await d.channel.send('dm reply');
  assert.equal(reply.channelId, dm.id);
  assert.deepEqual(
    fake.messages(dm.id).map((m) => m.content),
    ['psst', 'dm reply'],
  );
});

test('an injected attachment is served by the fake with its bytes and size', async () => {
  const { alice, general } = world();
  const client = await ready(newClient());
  const data = Buffer.from('%PDF-1.4 not really');
  const got = nextMessage(client, 'see file');
  fake.injectMessage({
    channelId: general.id,
    author: alice,
    content: 'see file',
    attachments: [{ filename: 'report v1.pdf', data, contentType: 'application/pdf' }],
  });
  const att = (await got).attachments.first();
  assert.ok(att);
  assert.equal(att.name, 'report v1.pdf');
  assert.equal(att.size, data.length);
  assert.ok(att.url.startsWith(`${fake.origin}/attachments/`));
  const res = await fetch(att.url);
  assert.equal(res.headers.get('content-type'), 'application/pdf');
  assert.deepEqual(Buffer.from(await res.arrayBuffer()), data);
});

test('send with the same nonce and enforceNonce twice stores one message', async () => {
  const { general } = world();
  const client = await ready(newClient());
  const ch = textChannel(client, general.id);
  const a = await ch.send({ content: 'once', nonce: 'outbox-1', enforceNonce: true });
  const b = await ch.send({ content: 'once', nonce: 'outbox-1', enforceNonce: true });
  assert.equal(a.id, b.id);
  assert.equal(fake.messages(general.id).length, 1);
  assert.deepEqual(postsTo(general.id)[0]?.body, {
    content: 'once',
    tts: false,
    nonce: 'outbox-1',
    enforce_nonce: true,
  });
});

test('a send that fails after the store rejects, and the message is stored once', async () => {
  const { general } = world();
  const client = await ready(newClient({ retries: 0 }));
  fake.fail({ method: 'POST', path: /^\/channels\/\d+\/messages$/, status: 500, afterStore: true });
  await assert.rejects(textChannel(client, general.id).send('lost ack'), { name: 'HTTPError', status: 500 });
  assert.deepEqual(
    fake.messages(general.id).map((m) => m.content),
    ['lost ack'],
  );
});

test('with retries and enforceNonce a stored-then-500 send resolves to the one stored message', async () => {
  const { general } = world();
  const client = await ready(newClient());
  fake.fail({ method: 'POST', path: /^\/channels\/\d+\/messages$/, status: 500, afterStore: true });
  const sent = await textChannel(client, general.id).send({
    content: 'x',
    nonce: 'outbox-2',
    enforceNonce: true,
  });
  assert.equal(postsTo(general.id).length, 2);
  assert.deepEqual(
    fake.messages(general.id).map((m) => m.id),
    [sent.id],
  );
});

test('a 429 with retry_after is retried transparently after Retry-After', async () => {
  const { general } = world();
  const client = await ready(newClient());
  fake.fail({
    method: 'POST',
    path: /\/messages$/,
    status: 429,
    body: { message: 'You are being rate limited.', retry_after: 0.2, global: false },
    headers: { 'Retry-After': '0.2' },
  });
  const started = Date.now();
  await textChannel(client, general.id).send('patient');
  assert.ok(Date.now() - started >= 200);
  assert.equal(postsTo(general.id).length, 2);
  assert.equal(fake.messages(general.id).length, 1);
});

test('content over 2000 characters is rejected with 50035', async () => {
  const { general } = world();
  const client = await ready(newClient());
  await assert.rejects(textChannel(client, general.id).send('x'.repeat(2001)), { status: 400, code: 50035 });
  assert.equal(fake.messages(general.id).length, 0);
});

test('a webhook posts with a chosen username and the bot sees the echo', async () => {
  const { general } = world();
  const client = await ready(newClient());
  const hook = await textChannel(client, general.id).createWebhook({ name: 'agents' });
  const seen = nextMessage(client, 'from the researcher');
  const posted = await hook.send({ content: 'from the researcher', username: 'Researcher' });
  assert.equal(posted.webhookId, hook.id);
  const echo = await seen;
  assert.equal(echo.webhookId, hook.id);
  assert.equal(echo.author.username, 'Researcher');
  assert.equal(echo.author.bot, true);
  const exec = fake.requests.find((r) => r.path.startsWith(`/webhooks/${hook.id}/`));
  assert.equal(exec?.query.get('wait'), 'true');
  assert.equal(exec?.headers.authorization, undefined);
});

test('creating a webhook without MANAGE_WEBHOOKS fails with 50013', async () => {
  fake.addBot(TOKEN);
  const guild = fake.addGuild('strict', {
    botPermissions: PermissionFlagsBits.ViewChannel | PermissionFlagsBits.SendMessages,
  });
  const ch = fake.addTextChannel(guild.id, 'locked');
  const client = await ready(newClient());
  await assert.rejects(textChannel(client, ch.id).createWebhook({ name: 'agents' }), {
    status: 403,
    code: 50013,
  });
});

test('a multipart upload is stored with its bytes', async () => {
  const { general } = world();
  const client = await ready(newClient());
  const data = Buffer.from('col1,col2\n1,2\n');
  const sent = await textChannel(client, general.id).send({
    content: 'the table',
    files: [{ attachment: data, name: 'table.csv' }],
  });
  const [stored] = fake.messages(general.id);
  assert.equal(stored?.id, sent.id);
  assert.equal(stored?.attachments[0]?.filename, 'table.csv');
  assert.equal(stored?.attachments[0]?.size, data.length);
  const upload = postsTo(general.id)[0];
  assert.equal(upload?.files[0]?.field, 'files[0]');
  assert.deepEqual(upload?.files[0]?.data, data);
  const res = await fetch(stored?.attachments[0]?.url ?? '');
  assert.deepEqual(Buffer.from(await res.arrayBuffer()), data);
});

test('messages.fetch({ after, limit }) pages forward, newest first like Discord', async () => {
  const { alice, general } = world();
  const client = await ready(newClient());
  const sent: APIMessage[] = [];
  for (let i = 1; i <= 5; i++)
    sent.push(fake.injectMessage({ channelId: general.id, author: alice, content: `m${i}` }));
  const after = sent[1]?.id ?? '';
  const page = await textChannel(client, general.id).messages.fetch({ after, limit: 2 });
  assert.deepEqual(
    [...page.values()].map((m) => m.content),
    ['m4', 'm3'],
  );
  const rest = await textChannel(client, general.id).messages.fetch({ after, limit: 100 });
  assert.deepEqual(
    [...rest.values()].map((m) => m.content),
    ['m5', 'm4', 'm3'],
  );
  const get = fake.requests.filter(
    (r) => r.method === 'GET' && r.path === `/channels/${general.id}/messages`,
  );
  assert.deepEqual(
    get.map((r) => r.query.toString()),
    [`after=${after}&limit=2`, `after=${after}&limit=100`],
  );
});

test('after dropped connections the client resumes and gets the buffered message', async () => {
  const { alice, general } = world();
  const client = await ready(newClient());
  fake.dropConnections();
  const got = nextMessage(client, 'while you were away');
  fake.injectMessage({ channelId: general.id, author: alice, content: 'while you were away' });
  await got;
  const ops = fake.gatewayReceived.map((f) => f.op);
  assert.equal(ops.filter((op) => op === GatewayOpcodes.Identify).length, 1);
  assert.equal(ops.filter((op) => op === GatewayOpcodes.Resume).length, 1);
  const after = nextMessage(client, 'and now');
  fake.injectMessage({ channelId: general.id, author: alice, content: 'and now' });
  await after;
});

test('after an invalidated session the client re-identifies and fetches the missed message', {
  timeout: 20_000,
}, async () => {
  const { alice, general } = world();
  const client = await ready(newClient());
  const seen: string[] = [];
  client.on(Events.MessageCreate, (m) => seen.push(m.content));
  const last = nextMessage(client, 'seen');
  const lastSeen = fake.injectMessage({ channelId: general.id, author: alice, content: 'seen' });
  await last;

  const reidentified = nextEvent(client, Events.ShardReady, () => true, 15_000);
  fake.invalidateSessions();
  fake.dropConnections();
  fake.injectMessage({ channelId: general.id, author: alice, content: 'missed' });
  await reidentified;

  const ops = fake.gatewayReceived.map((f) => f.op);
  assert.equal(ops.filter((op) => op === GatewayOpcodes.Identify).length, 2);
  const ch = await client.channels.fetch(general.id);
  assert.ok(ch?.isTextBased());
  const missed = await ch.messages.fetch({ after: lastSeen.id, limit: 100 });
  assert.deepEqual(
    [...missed.values()].map((m) => m.content),
    ['missed'],
  );
  assert.deepEqual(seen, ['seen']);
});

test('two bots see each other and their own posts', async () => {
  const { general } = world();
  const other = fake.addBot('fake-token-2', 'helper');
  const a = await ready(newClient());
  const b = await ready(newClient(), 'fake-token-2');
  const seenByA = nextMessage(a, 'hi from helper');
  const ownEcho = nextMessage(b, 'hi from helper');
  await textChannel(b, general.id).send('hi from helper');
  assert.equal((await seenByA).author.id, other.id);
  assert.equal((await ownEcho).author.id, b.user.id);
});

test('heartbeats are acknowledged, so the client never resumes', async () => {
  await fake.stop();
  fake = await FakeDiscord.start({ heartbeatIntervalMs: 50 });
  world();
  await ready(newClient());
  await new Promise((resolve) => setTimeout(resolve, 300));
  const ops = fake.gatewayReceived.map((f) => f.op);
  assert.ok(ops.filter((op) => op === GatewayOpcodes.Heartbeat).length >= 3);
  assert.ok(!ops.includes(GatewayOpcodes.Resume));
});

test('an invalid token makes login reject with TokenInvalid', async () => {
  fake.addBot(TOKEN);
  fake.setTokenValid(TOKEN, false);
  await assert.rejects(newClient().login(TOKEN), { code: 'TokenInvalid' });
  await assert.rejects(newClient().login('never-added'), { code: 'TokenInvalid' });
});
