// A test host in a network namespace of its own, behind a veth pair: a real address on a real
// interface that the proxy dials for real. It serves HTTP on :80 and HTTPS on :443 (a certificate
// for every name given, from a CA made with openssl for the test), and records each request.
// 198.18.0.0/15 is the benchmarking range: not public, so tests let it through with the egress
// policy's testAddresses. Root, iproute2 and openssl are needed; .ci/run switches this tier on.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface NetnsHost {
  address: string;
  /** The CA certificate (PEM) that signed the host's certificate. */
  caPem: string;
  /** `host path` of every request the host saw. */
  hits(): string[];
  close(): Promise<void>;
}

/** Whether the netns tier runs (NANOCLAW_TEST_NETNS=1); under CI=true it must. */
export function netnsUnderTest(): boolean {
  if (process.env.NANOCLAW_TEST_NETNS === '1') {
    if (process.getuid?.() !== 0) throw new Error('NANOCLAW_TEST_NETNS=1 needs root (ip netns)');
    return true;
  }
  if (process.env.CI === 'true') throw new Error('CI=true needs the netns tier: run .ci/run');
  return false;
}

const SERVER_JS = `
const http = require('http'), https = require('https'), fs = require('fs');
const [addr, key, cert] = process.argv.slice(1);
const handler = (req, res) => {
  process.stdout.write('hit ' + req.headers.host + ' ' + req.url + '\\n');
  res.setHeader('content-type', 'text/plain');
  res.end('hello from the netns host ' + req.url);
};
let up = 0;
const ready = () => { if (++up === 2) process.stdout.write('ready\\n'); };
http.createServer(handler).listen(80, addr, ready);
https.createServer({ key: fs.readFileSync(key), cert: fs.readFileSync(cert) }, handler).listen(443, addr, ready);
`;

function makeCerts(dir: string, names: readonly string[]): { key: string; cert: string; ca: string } {
  const f = (n: string) => path.join(dir, n);
  const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
  ssl(
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=NanoClaw test CA',
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.pem'),
  );
  ssl(
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-subj',
    `/CN=${names[0]}`,
    '-keyout',
    f('host.key'),
    '-out',
    f('host.csr'),
  );
  writeFileSync(f('ext.cnf'), `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}\n`);
  ssl(
    'x509',
    '-req',
    '-in',
    f('host.csr'),
    '-CA',
    f('ca.pem'),
    '-CAkey',
    f('ca.key'),
    '-CAcreateserial',
    '-days',
    '2',
    '-extfile',
    f('ext.cnf'),
    '-out',
    f('host.pem'),
  );
  return { key: f('host.key'), cert: f('host.pem'), ca: f('ca.pem') };
}

export async function startNetnsHost(names: readonly string[]): Promise<NetnsHost> {
  const id = process.pid % 100_000;
  const ns = `nanoclaw-t${id}`;
  const [vh, vn] = [`nch${id}`, `ncn${id}`];
  const net = `198.18.${(process.pid % 250) + 1}`;
  const address = `${net}.2`;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-netns-'));
  const ip = (...args: string[]) => execFileSync('ip', args, { stdio: 'pipe' });
  const cleanup = () => {
    try {
      ip('netns', 'del', ns);
    } catch {
      // not there
    }
    try {
      ip('link', 'del', vh);
    } catch {
      // went with the namespace
    }
  };
  cleanup(); // what an earlier run of this pid left
  let server: ChildProcess | undefined;
  try {
    const certs = makeCerts(dir, names);
    ip('netns', 'add', ns);
    ip('link', 'add', vh, 'type', 'veth', 'peer', 'name', vn);
    ip('link', 'set', vn, 'netns', ns);
    ip('addr', 'add', `${net}.1/30`, 'dev', vh);
    ip('link', 'set', vh, 'up');
    ip('-n', ns, 'addr', 'add', `${address}/30`, 'dev', vn);
    ip('-n', ns, 'link', 'set', vn, 'up');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    const hits: string[] = [];
    server = spawn(
      'ip',
      ['netns', 'exec', ns, process.execPath, '-e', SERVER_JS, address, certs.key, certs.cert],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
        env: {},
      },
    );
    const proc = server;
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      proc.stdout?.on('data', (d: Buffer) => {
        buf += d.toString();
        for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (line === 'ready') resolve();
          else if (line.startsWith('hit ')) hits.push(line.slice(4));
        }
      });
      proc.once('exit', (code) => reject(new Error(`the netns host exited with ${code}`)));
    });
    return {
      address,
      caPem: readFileSync(certs.ca, 'utf8'),
      hits: () => [...hits],
      close: async () => {
        proc.kill('SIGKILL');
        await new Promise((r) => (proc.exitCode !== null ? r(undefined) : proc.once('exit', r)));
        cleanup();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    server?.kill('SIGKILL');
    cleanup();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
