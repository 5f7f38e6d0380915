// Reply latency per sandbox runtime, with the instant fake model: a cold reply (a new sandbox for
// each message: the runtime's start, Claude Code's start, the session resume) and a warm one (the
// agent live). Runtimes: the arguments (default bwrap, podman, docker), each skipped with a line
// when it is not ready here. For podman and docker, source .ci/podman-setup first (storage,
// the image, DOCKER_HOST). Prints a table and one JSON line; never asserts a timing.
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { loadConfig, projectRoot } from '../src/config.js';
import { sandboxFor } from '../src/sandbox/detect.js';
import {
  eventually,
  openEvents,
  removeHome,
  type SseClient,
  startApp,
  tempHome,
  testEnv,
} from '../test/support/app.js';
import { type FakeAnthropic, startFakeAnthropic, text } from '../test/support/fake-anthropic.js';

const COLD_N = 8;
const WARM_N = 20;

function p(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
}

async function reply(fake: FakeAnthropic, key: string, port: number, sse: SseClient, label: string) {
  fake.script(key, [{ reply: text(label) }]);
  const t0 = performance.now();
  const res = await fetch(`http://127.0.0.1:${port}/api/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ text: label }),
  });
  if (res.status !== 202) throw new Error(`post: ${res.status}`);
  await sse.waitFor((e) => e.event === 'message' && (e.data as { text: string }).text === label, 60_000);
  return performance.now() - t0;
}

async function measure(fake: FakeAnthropic, sandbox: string) {
  const key = `bench-${sandbox}`;
  const app = await startApp({
    sandbox,
    baseUrl: `${fake.baseUrl}/s/${key}`,
    env: { IDLE_TIMEOUT_MS: '300' },
  });
  const sse = await openEvents(app.port);
  const gone = () => eventually(() => app.orch.queue.snapshot().live.length === 0, 30_000, 'idle close');
  try {
    await reply(fake, key, app.port, sse, `${sandbox}-first`);
    const cold: number[] = [];
    for (let i = 0; i < COLD_N; i++) {
      await gone();
      cold.push(await reply(fake, key, app.port, sse, `${sandbox}-cold-${i}`));
    }
    const warm: number[] = [];
    for (let i = 0; i < WARM_N; i++) warm.push(await reply(fake, key, app.port, sse, `${sandbox}-warm-${i}`));
    return { cold: cold.sort((a, b) => a - b), warm: warm.sort((a, b) => a - b) };
  } finally {
    sse.close();
    await app.stop();
    removeHome(app.home);
  }
}

async function main(): Promise<void> {
  const wanted = process.argv.slice(2).length > 0 ? process.argv.slice(2) : ['bwrap', 'podman', 'docker'];
  const fake = await startFakeAnthropic({ maxRequestsPerScript: 10_000 });
  const figures: Record<string, { coldP50: number; coldP90: number; warmP50: number }> = {};
  try {
    for (const sandbox of wanted) {
      const home = tempHome();
      try {
        const config = loadConfig(testEnv(home, fake.baseUrl, { SANDBOX: sandbox }), { root: projectRoot() });
        sandboxFor(config, process.env);
      } catch (e) {
        console.log(`${sandbox}: not ready here (${(e as Error).message})`);
        continue;
      } finally {
        removeHome(home);
      }
      const m = await measure(fake, sandbox);
      figures[sandbox] = { coldP50: p(m.cold, 0.5), coldP90: p(m.cold, 0.9), warmP50: p(m.warm, 0.5) };
    }
  } finally {
    await fake.close();
  }
  console.log(`machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, Node ${process.version}`);
  console.log('runtime   cold p50   cold p90   warm p50   (ms)');
  for (const [k, f] of Object.entries(figures)) {
    console.log(
      `${k.padEnd(9)} ${f.coldP50.toFixed(0).padStart(8)} ${f.coldP90.toFixed(0).padStart(10)} ${f.warmP50.toFixed(1).padStart(10)}`,
    );
  }
  console.log(JSON.stringify({ coldN: COLD_N, warmN: WARM_N, figures }));
}

await main();
