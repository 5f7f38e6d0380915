// Orchestrator RSS with Discord connected: the real process (`nanoclaw start`) logged in to the
// fake Discord server, idle, after 20 answered messages in a registered channel (one live agent),
// and with four live agents in four groups. Prints MiB.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { openDb } from '../src/db.js';
import { eventually, removeHome, spawnApp, tempHome } from '../test/support/app.js';
import { startFakeAnthropic, text } from '../test/support/fake-anthropic.js';
import { FakeDiscord } from '../test/support/fake-discord.js';

const rssMiB = (pid: number) =>
  Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const model = await startFakeAnthropic({ maxRequestsPerScript: 1000 });
const discord = await FakeDiscord.start();
const bot = discord.addBot('bench-token', 'Krabby');
const owner = discord.addUser('owner');
const guild = discord.addGuild('Home');
const channel = discord.addTextChannel(guild.id, 'general').id;
const rooms = Array.from({ length: 3 }, (_, i) => discord.addTextChannel(guild.id, `room-${i}`).id);
const home = tempHome();
writeFileSync(path.join(home, '.env'), 'ANTHROPIC_API_KEY=sk-bench\nSANDBOX=bwrap\n');
const db = openDb(path.join(home, 'store', 'messages.db'));
for (const [i, id] of [channel, ...rooms].entries()) {
  const folder = i === 0 ? 'general' : `room-${i}`;
  db.addGroup(
    { jid: `discord:${id}`, name: folder, folder, trigger: '@Krabby', requiresTrigger: false, isMain: false },
    Date.now(),
  );
}
db.close();
const rounds = 20;
model.script('default', [
  ...Array.from({ length: rounds }, (_, i) => ({ reply: text(`answer ${i}`) })),
  ...rooms.map((_, i) => ({ reply: text(`room answer ${i}`) })),
]);
const app = await spawnApp(home, {
  ANTHROPIC_BASE_URL: model.baseUrl,
  WEB_PORT: '0',
  DISCORD_BOT_TOKEN: 'bench-token',
  DISCORD_API_URL: discord.api,
});
try {
  await eventually(() => app.stderr().includes('discord: connected'), 20_000, 'discord');
  await sleep(2000);
  const idle = rssMiB(app.child.pid ?? 0);
  for (let i = 0; i < rounds; i++) {
    discord.injectMessage({ channelId: channel, author: owner, content: `question ${i}` });
    await discord.nextMessage((m) => m.author.id === bot.id && m.content === `answer ${i}`, 30_000);
  }
  await sleep(1000);
  const one = rssMiB(app.child.pid ?? 0);
  // Three more groups, each with its own live agent (MAX_CONCURRENT_AGENTS defaults to 5).
  for (const [i, id] of rooms.entries()) {
    discord.injectMessage({ channelId: id, author: owner, content: 'hello' });
    await discord.nextMessage((m) => m.author.id === bot.id && m.content === `room answer ${i}`, 30_000);
  }
  await sleep(1000);
  const four = rssMiB(app.child.pid ?? 0);
  const perAgent = (four - one) / rooms.length;
  const f = (n: number) => Number(n.toFixed(1));
  console.log(
    `orchestrator RSS with Discord connected (MiB): idle ${f(idle)}; one live agent after ${rounds} answers ${f(one)}; four live agents ${f(four)} (${f(perAgent)} per extra agent)`,
  );
  console.log(
    JSON.stringify({
      idleMiB: f(idle),
      oneAgentMiB: f(one),
      fourAgentsMiB: f(four),
      perExtraAgentMiB: f(perAgent),
      rounds,
    }),
  );
} finally {
  app.child.kill('SIGTERM');
  await app.exited;
  await discord.stop();
  await model.close();
  removeHome(home);
}
