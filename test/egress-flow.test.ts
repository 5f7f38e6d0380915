// Egress end to end: curl inside a real bwrap sandbox → the in-sandbox bridge → the run's Unix
// socket → the proxy's policy → a dial. Resolution and dialling are injected: names resolve from
// a static map and every accepted dial is recorded and redirected to a test server on 127.0.0.1,
// so no packet goes to any other address.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { CLI, eventually, removeHome, startApp } from './support/app.js';
import {
  type FakeAnthropic,
  startFakeAnthropic,
  text,
  toolResult,
  toolUse,
} from './support/fake-anthropic.js';

let model: FakeAnthropic;
let site: http.Server;
let sitePort = 0;
before(async () => {
  model = await startFakeAnthropic();
  site = http.createServer((req, res) =>
    res.end(
      `hello from ${req.headers.host}${req.url}${req.headers.authorization ? ` (${req.headers.authorization})` : ''}`,
    ),
  );
  await new Promise<void>((r) => site.listen(0, '127.0.0.1', () => r()));
  sitePort = (site.address() as AddressInfo).port;
});
after(async () => {
  await model.close();
  site.closeAllConnections();
  await new Promise<void>((r) => site.close(() => r()));
});

const NAMES: Record<string, string[]> = {
  'site.test': ['93.184.216.34'],
  'docs.example.org': ['93.184.216.34'],
  'other.test': ['93.184.216.34'],
  'evil.test': ['10.0.0.5'],
  'meta.test': ['169.254.169.254'],
  'mixed.test': ['93.184.216.34', '127.0.0.1'],
};

/**
 * Runs `command` once in the main group's sandbox (after `prepare`, e.g. a CLI call) and returns
 * what it wrote, the recorded dials and the logs. Names resolve from NAMES; every accepted dial is
 * recorded and goes to the test server on 127.0.0.1.
 */
async function probe(
  key: string,
  command: string,
  opts: { env?: Record<string, string>; prepare?: (home: string) => void } = {},
) {
  const dials: string[] = [];
  const s = model.script(key, [
    { reply: toolUse('Bash', { command }) },
    { when: toolResult('Bash'), reply: text('probed') },
  ]);
  const app = await startApp({
    baseUrl: s.baseUrl,
    ...(opts.env ? { env: opts.env } : {}),
    egress: {
      resolve: async (host) => {
        const found = NAMES[host];
        if (!found) throw Object.assign(new Error(`unknown ${host}`), { code: 'ENOTFOUND' });
        return found;
      },
      dial: (address, port) => {
        dials.push(`${address}:${port}`);
        return net.connect({ host: '127.0.0.1', port: sitePort });
      },
    },
  });
  try {
    opts.prepare?.(app.home);
    await app.post('probe the network');
    await eventually(() => app.orch.db.outboxAfter('web:main', 0).some((r) => r.text === 'probed'), 30_000);
    s.assertDone();
    const folder = path.join(app.home, 'groups', 'main');
    const files = Object.fromEntries(
      readdirSync(folder)
        .filter((f) => f.endsWith('.txt'))
        .map((f) => [f.replace(/\.txt$/, ''), readFileSync(path.join(folder, f), 'utf8')]),
    );
    return { files, dials, logs: app.logs.join('') };
  } finally {
    await app.stop();
    removeHome(app.home);
  }
}

test('the agent reaches public hosts through the proxy, and private ones are refused before any dial', async () => {
  const { files, dials, logs } = await probe(
    'egress',
    [
      'curl -sS http://site.test/plain > plain.txt 2>&1',
      'curl -sS -p http://site.test/tunnel > tunnel.txt 2>&1',
      'curl -sS -H "Authorization: Bearer site-token" http://site.test/auth > auth.txt 2>&1',
      'curl -sS http://evil.test/ > evil.txt 2>&1',
      'curl -sS http://mixed.test/ > mixed.txt 2>&1',
      'curl -sS http://169.254.169.254/latest/meta-data/ > metadata-ip.txt 2>&1',
      'curl -sS https://meta.test/ > /dev/null 2>&1; echo $? > meta-tls.txt',
      'curl -sS http://site.test:8080/ > port.txt 2>&1',
      "curl -sS --noproxy '*' --max-time 5 http://93.184.216.34/ > /dev/null 2>&1; echo $? > direct.txt",
    ].join('; '),
  );
  assert.equal(files.plain, 'hello from site.test/plain');
  assert.equal(files.tunnel, 'hello from site.test/tunnel');
  assert.equal(files.auth, 'hello from site.test/auth (Bearer site-token)', "the agent's own headers pass");
  assert.match(files.evil ?? '', /egress refused: evil\.test resolves to non-public 10\.0\.0\.5/);
  assert.match(files.mixed ?? '', /egress refused: mixed\.test resolves to non-public 127\.0\.0\.1/);
  assert.match(files['metadata-ip'] ?? '', /egress refused/);
  assert.equal(files['meta-tls']?.trim(), '56', 'CONNECT refused');
  assert.match(files.port ?? '', /egress refused: port 8080 not allowed/);
  assert.notEqual(files.direct?.trim(), '0', 'no way out without the proxy');
  assert.deepEqual(dials, Array(3).fill('93.184.216.34:80'), 'only the accepted requests were dialled');
  assert.match(logs, /group main: egress refused evil\.test:80/);
  assert.match(logs, /group main: egress refused meta\.test:443/);
});

test('with EGRESS_ALLOW set, only the listed hosts are reachable', async () => {
  const { files, dials } = await probe(
    'allow',
    'curl -sS http://site.test/ok > ok.txt 2>&1; curl -sS http://other.test/ > other.txt 2>&1',
    { env: { EGRESS_ALLOW: 'site.test' } },
  );
  assert.equal(files.ok, 'hello from site.test/ok');
  assert.match(files.other ?? '', /egress refused: other\.test not in allowlist/);
  assert.deepEqual(dials, ['93.184.216.34:80']);
});

test('a group egress setting from the CLI limits that group at its next run, even with no EGRESS_ALLOW', async () => {
  const { files, dials } = await probe(
    'group-egress',
    'curl -sS http://docs.example.org/a > a.txt 2>&1; curl -sS http://site.test/b > b.txt 2>&1',
    {
      prepare: (home) => {
        const r = spawnSync(process.execPath, [CLI, 'groups', 'set', 'main', '--egress', '*.example.org'], {
          env: { PATH: process.env.PATH ?? '/usr/bin:/bin', NANOCLAW_HOME: home },
          encoding: 'utf8',
        });
        assert.equal(r.status, 0, r.stderr);
      },
    },
  );
  assert.equal(files.a, 'hello from docs.example.org/a');
  assert.match(files.b ?? '', /egress refused: site\.test not in allowlist/);
  assert.deepEqual(dials, ['93.184.216.34:80']);
});
