// The egress policy against an injected resolver: a static map, so no test makes a DNS query or
// opens a connection. Every refusal that needs no resolution also proves the resolver was never
// asked, which is what "decided before any lookup or dial" means here.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  createEgressPolicy,
  type EgressDecision,
  type EgressPolicyOptions,
  globProblem,
  isPublicAddress,
  type Resolve,
} from '../src/egress.js';

/** A resolver over a static map that records every name it is asked; unknown names are ENOTFOUND. */
function staticResolver(entries: Record<string, string[]> = {}): { resolve: Resolve; asked: string[] } {
  const names = new Map(Object.entries(entries));
  const asked: string[] = [];
  const resolve: Resolve = async (host) => {
    asked.push(host);
    const addresses = names.get(host);
    if (addresses === undefined) {
      throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
    }
    return addresses;
  };
  return { resolve, asked };
}

const NAMES: Record<string, string[]> = {
  'site.test': ['93.184.215.14'],
  'docs.example.org': ['93.184.215.20'],
  'a.b.example.org': ['93.184.215.21'],
  'example.org': ['93.184.215.22'],
  'other.com': ['93.184.215.23'],
  'evil.example.org': ['10.0.0.1'],
  'loopback.test': ['127.0.0.1'],
  'private.test': ['10.1.2.3'],
  'metadata.test': ['169.254.169.254'],
  'mixed.test': ['93.184.215.14', '127.0.0.1'],
  'mapped.test': ['::ffff:7f00:1'],
  'dual.test': ['2606:4700::1111', '1.1.1.1'],
  'netns.test': ['198.18.0.2'],
};

function policy(options: Partial<EgressPolicyOptions> = {}) {
  const { resolve, asked } = staticResolver(NAMES);
  return { decide: createEgressPolicy({ resolve, ...options }), asked };
}

function assertRefused(decision: EgressDecision, reason: string): void {
  assert.deepEqual(decision, { ok: false, reason });
  assert.doesNotMatch(reason, /[\r\n\u2028\u2029]/, 'a reason is one line');
}

describe('isPublicAddress', () => {
  test('accepts public IPv4 and IPv6 addresses', () => {
    const publicAddresses = [
      '1.1.1.1',
      '8.8.8.8',
      '93.184.215.14',
      '2606:4700::1111',
      '2001:4860:4860::8888', // just outside 2001::/23
      '2a00:1450:4001:80b::200e',
      // the edges of denied IPv4 blocks
      '9.255.255.255',
      '11.0.0.0',
      '100.63.255.255',
      '100.128.0.0',
      '126.255.255.255',
      '128.0.0.0',
      '169.253.255.255',
      '172.15.255.255',
      '172.32.0.0',
      '192.0.1.255',
      '192.167.255.255',
      '198.17.255.255',
      '198.20.0.0',
      '223.255.255.255',
      // forms that embed a public IPv4 address
      '::ffff:8.8.8.8',
      '::ffff:808:808',
      '64:ff9b::808:808',
      '2002:808:808::1',
    ];
    for (const address of publicAddresses) assert.equal(isPublicAddress(address), true, address);
  });

  test('refuses every denied IPv4 block', () => {
    const denied = [
      ['0.0.0.0/8', '0.0.0.0', '0.255.255.255'],
      ['10.0.0.0/8', '10.0.0.1', '10.255.255.255'],
      ['100.64.0.0/10', '100.64.0.1', '100.127.255.255'],
      ['127.0.0.0/8', '127.0.0.1', '127.255.255.254'],
      ['169.254.0.0/16', '169.254.169.254', '169.254.0.1'],
      ['172.16.0.0/12', '172.16.0.1', '172.31.255.255'],
      ['192.0.0.0/24', '192.0.0.8', '192.0.0.255'],
      ['192.0.2.0/24', '192.0.2.2', '192.0.2.255'],
      ['192.88.99.0/24', '192.88.99.1', '192.88.99.255'],
      ['192.168.0.0/16', '192.168.1.1', '192.168.255.255'],
      ['198.18.0.0/15', '198.18.0.2', '198.19.255.255'],
      ['198.51.100.0/24', '198.51.100.7', '198.51.100.255'],
      ['203.0.113.0/24', '203.0.113.9', '203.0.113.255'],
      ['224.0.0.0/4', '224.0.0.1', '239.255.255.250'],
      ['240.0.0.0/4', '240.0.0.1', '255.255.255.255'],
    ];
    for (const [block, ...addresses] of denied) {
      for (const address of addresses)
        assert.equal(isPublicAddress(address), false, `${address} in ${block}`);
    }
  });

  test('refuses every denied IPv6 block and anything outside global unicast', () => {
    const denied = [
      '::', // ::/128
      '::1', // ::1/128
      '0:0:0:0:0:0:0:1',
      '100::1', // 100::/64
      '100::ffff:ffff:ffff:ffff',
      '2001::1', // Teredo, in 2001::/23
      '2001:0:4136:e378:8000:63bf:3fff:fdd2',
      '2001:2::1',
      '2001:1ff:ffff::1', // last /32 of 2001::/23
      '2001:db8::1', // 2001:db8::/32
      '2001:db8:ffff::1',
      '3fff::1', // 3fff::/20
      'fc00::1', // fc00::/7
      'fd00:ec2::254',
      'fe80::1', // fe80::/10
      'febf:ffff::1',
      'fec0::1', // fec0::/10
      'ff02::1', // ff00::/8
      'ff05::1:3',
      '4000::1', // outside 2000::/3
      '1000::1',
      '::ffff:0:7f00:1', // IPv4-translated (SIIT), outside 2000::/3
      '64:ff9b:1::808:808', // local-use NAT64, outside 2000::/3
      'fe80::1%eth0', // a zone index is only meaningful on a link
      '2606:4700::1111%1',
    ];
    for (const address of denied) assert.equal(isPublicAddress(address), false, address);
  });

  test('unmaps IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms and checks them as IPv4', () => {
    const denied = [
      '::ffff:127.0.0.1',
      '::ffff:7f00:1',
      '::FFFF:7F00:1',
      '0:0:0:0:0:ffff:7f00:1',
      '::ffff:a9fe:a9fe', // 169.254.169.254
      '::ffff:10.0.0.1',
      '::ffff:0.0.0.0',
      '::ffff:ffff:ffff', // 255.255.255.255
      '::127.0.0.1', // IPv4-compatible
      '::7f00:1',
      '::a00:1',
      '64:ff9b::a9fe:a9fe', // NAT64
      '64:ff9b::127.0.0.1',
      '64:ff9b::c0a8:101',
      '2002:7f00:1::1', // 6to4 around 127.0.0.1
      '2002:a9fe:a9fe::',
    ];
    for (const address of denied) assert.equal(isPublicAddress(address), false, address);
  });

  test('is false for anything net.isIP rejects', () => {
    const notAddresses = [
      '',
      'localhost',
      'example.com',
      '127.1',
      '2130706433',
      '0177.0.0.1',
      '0x7f.0.0.1',
      '[::1]',
      '1.1.1.1.',
      ' 1.1.1.1',
      '1.1.1.1:443',
      '::ffff:1.1.1',
    ];
    for (const text of notAddresses) assert.equal(isPublicAddress(text), false, JSON.stringify(text));
  });
});

describe('createEgressPolicy', () => {
  test('allows public IP literals and returns the address to dial, without resolving', async () => {
    const { decide, asked } = policy();
    for (const [host, address] of [
      ['1.1.1.1', '1.1.1.1'],
      ['8.8.8.8', '8.8.8.8'],
      ['2606:4700::1111', '2606:4700::1111'],
      ['[2606:4700::1111]', '2606:4700::1111'],
      ['1.1.1.1.', '1.1.1.1'],
    ] as const) {
      assert.deepEqual(await decide(host, 443), { ok: true, address, port: 443 }, host);
    }
    assert.deepEqual(asked, []);
  });

  test('refuses non-public IP literals in every encoding, without resolving', async () => {
    const { decide, asked } = policy();
    for (const [host, address] of [
      ['127.0.0.1', '127.0.0.1'],
      ['[::1]', '::1'],
      ['::1', '::1'],
      ['[::ffff:127.0.0.1]', '::ffff:127.0.0.1'],
      ['[::ffff:7f00:1]', '::ffff:7f00:1'],
      ['[64:ff9b::a9fe:a9fe]', '64:ff9b::a9fe:a9fe'],
      ['0.0.0.0', '0.0.0.0'],
      ['169.254.169.254', '169.254.169.254'],
      ['[fd00:ec2::254]', 'fd00:ec2::254'],
      ['100.64.0.1', '100.64.0.1'],
      ['224.0.0.1', '224.0.0.1'],
      ['255.255.255.255', '255.255.255.255'],
      ['10.0.0.1', '10.0.0.1'],
      ['192.168.1.1', '192.168.1.1'],
      ['192.0.2.2', '192.0.2.2'],
      ['198.18.0.2', '198.18.0.2'],
      ['[fe80::1]', 'fe80::1'],
      ['[ff02::1]', 'ff02::1'],
    ] as const) {
      assertRefused(await decide(host, 443), `${address} resolves to non-public ${address}`);
    }
    assert.deepEqual(asked, []);
  });

  test('refuses localhost, metadata and .internal names by name, without resolving', async () => {
    const { decide, asked } = policy();
    for (const [host, name] of [
      ['localhost', 'localhost'],
      ['foo.localhost', 'foo.localhost'],
      ['a.b.localhost', 'a.b.localhost'],
      ['metadata', 'metadata'],
      ['metadata.google.internal', 'metadata.google.internal'],
      ['x.internal', 'x.internal'],
      ['LOCALHOST.', 'localhost'],
      ['Metadata.Google.Internal.', 'metadata.google.internal'],
    ] as const) {
      assertRefused(await decide(host, 80), `name ${name} refused`);
    }
    assert.deepEqual(asked, []);
  });

  test('refuses a whole name when any address it resolves to is not public', async () => {
    const { decide, asked } = policy();
    for (const [host, address] of [
      ['loopback.test', '127.0.0.1'],
      ['private.test', '10.1.2.3'],
      ['metadata.test', '169.254.169.254'],
      ['mixed.test', '127.0.0.1'],
      ['mapped.test', '::ffff:7f00:1'],
    ] as const) {
      assertRefused(await decide(host, 443), `${host} resolves to non-public ${address}`);
    }
    assert.deepEqual(asked, ['loopback.test', 'private.test', 'metadata.test', 'mixed.test', 'mapped.test']);
  });

  test('allows a name whose addresses are all public and returns the first one', async () => {
    const { decide, asked } = policy();
    assert.deepEqual(await decide('site.test', 443), { ok: true, address: '93.184.215.14', port: 443 });
    assert.deepEqual(await decide('dual.test', 80), { ok: true, address: '2606:4700::1111', port: 80 });
    assert.deepEqual(asked, ['site.test', 'dual.test']);
  });

  test('refuses an unknown name with the resolver error code', async () => {
    const { decide, asked } = policy();
    assertRefused(await decide('example.com', 443), 'resolve example.com: ENOTFOUND');
    assert.deepEqual(asked, ['example.com']);
  });

  test('refuses a name when the resolver fails without a code or finds no address', async () => {
    const failing = createEgressPolicy({
      resolve: async () => {
        throw new Error('resolver\nbroke');
      },
    });
    assertRefused(await failing('site.test', 443), 'resolve site.test: resolver broke');
    const empty = createEgressPolicy({ resolve: async () => [] });
    assertRefused(await empty('site.test', 443), 'resolve site.test: no addresses');
    const garbage = createEgressPolicy({ resolve: async () => ['1.1.1.1', 'not\nan address'] });
    assertRefused(await garbage('site.test', 443), 'resolve site.test: "not\\nan address" is not an address');
  });

  test('refuses ports outside the allowed list, without resolving', async () => {
    const { decide, asked } = policy();
    assertRefused(await decide('site.test', 22), 'port 22 not allowed');
    assertRefused(await decide('site.test', 8443), 'port 8443 not allowed');
    assertRefused(await decide('1.1.1.1', 25), 'port 25 not allowed');
    assert.deepEqual(asked, []);
    assert.deepEqual(await decide('site.test', 80), { ok: true, address: '93.184.215.14', port: 80 });
    assert.deepEqual(await decide('site.test', 443), { ok: true, address: '93.184.215.14', port: 443 });
  });

  test('uses a custom ports list instead of 80 and 443', async () => {
    const { decide, asked } = policy({ ports: [8443] });
    assert.deepEqual(await decide('site.test', 8443), { ok: true, address: '93.184.215.14', port: 8443 });
    assertRefused(await decide('site.test', 443), 'port 443 not allowed');
    assertRefused(await decide('site.test', 80), 'port 80 not allowed');
    assert.deepEqual(asked, ['site.test']);
  });

  test('with an allowlist, allows only matching names, one label per *', async () => {
    const { decide, asked } = policy({ allow: ['*.example.org', 'site.test'] });
    assert.deepEqual(await decide('docs.example.org', 443), {
      ok: true,
      address: '93.184.215.20',
      port: 443,
    });
    assert.deepEqual(await decide('site.test', 443), { ok: true, address: '93.184.215.14', port: 443 });
    assert.deepEqual(asked, ['docs.example.org', 'site.test']);
    asked.length = 0;

    assertRefused(await decide('a.b.example.org', 443), 'a.b.example.org not in allowlist');
    assertRefused(await decide('example.org', 443), 'example.org not in allowlist');
    assertRefused(await decide('other.com', 443), 'other.com not in allowlist');
    assertRefused(await decide('xexample.org', 443), 'xexample.org not in allowlist');
    assertRefused(await decide('93.184.215.14', 443), 'IP literals are refused when an allowlist is set');
    assertRefused(await decide('[2606:4700::1111]', 443), 'IP literals are refused when an allowlist is set');
    assertRefused(await decide('localhost', 443), 'name localhost refused');
    assert.deepEqual(asked, []);

    assertRefused(await decide('evil.example.org', 443), 'evil.example.org resolves to non-public 10.0.0.1');
    assert.deepEqual(asked, ['evil.example.org']);
  });

  test('matches names case-insensitively and ignores a trailing dot', async () => {
    const { decide, asked } = policy({ allow: ['*.Example.ORG', 'site.test'] });
    assert.deepEqual(await decide('DOCS.example.org.', 443), {
      ok: true,
      address: '93.184.215.20',
      port: 443,
    });
    assert.deepEqual(await decide('Site.Test.', 80), { ok: true, address: '93.184.215.14', port: 80 });
    assertRefused(await decide('A.B.Example.Org.', 443), 'a.b.example.org not in allowlist');
    assert.deepEqual(asked, ['docs.example.org', 'site.test']);
  });

  test('treats an empty allowlist as no allowlist', async () => {
    const { decide } = policy({ allow: [] });
    assert.deepEqual(await decide('other.com', 443), { ok: true, address: '93.184.215.23', port: 443 });
    assert.deepEqual(await decide('1.1.1.1', 443), { ok: true, address: '1.1.1.1', port: 443 });
  });

  test('testAddresses makes 198.18.0.2 acceptable, by literal and through a name', async () => {
    const strict = policy();
    assertRefused(await strict.decide('netns.test', 443), 'netns.test resolves to non-public 198.18.0.2');

    const { decide } = policy({ testAddresses: ['198.18.0.2'] });
    assert.deepEqual(await decide('198.18.0.2', 443), { ok: true, address: '198.18.0.2', port: 443 });
    assert.deepEqual(await decide('netns.test', 443), { ok: true, address: '198.18.0.2', port: 443 });
    assertRefused(await decide('198.18.0.3', 443), '198.18.0.3 resolves to non-public 198.18.0.3');
    assertRefused(await decide('loopback.test', 443), 'loopback.test resolves to non-public 127.0.0.1');
  });

  test('refuses hosts that are neither a valid name nor an IP literal, without resolving', async () => {
    const { decide, asked } = policy();
    for (const [host, quoted] of [
      ['', '""'],
      ['a b.test', '"a b.test"'],
      ['foo..test', '"foo..test"'],
      ['.test', '".test"'],
      ['site.test..', '"site.test.."'],
      ['[site.test]', '"[site.test]"'],
      ['site.test:443', '"site.test:443"'],
      ['evil.test\r\nX-Injected: 1', '"evil.test\\r\\nX-Injected: 1"'],
      ['caf\u00e9.test', '"caf\\u00e9.test"'],
    ] as const) {
      assertRefused(await decide(host, 443), `host ${quoted} is not a valid name`);
    }
    assert.deepEqual(asked, []);
  });

  test('throws a TypeError naming the bad glob when allow contains an invalid one', () => {
    const { resolve } = staticResolver();
    assert.throws(() => createEgressPolicy({ resolve, allow: ['site.test', 'a*.com'] }), {
      name: 'TypeError',
      message: `allow: glob "a*.com" has '*' inside a label; '*' must be a whole label`,
    });
    assert.throws(() => createEgressPolicy({ resolve, allow: ['10.0.0.1'] }), {
      name: 'TypeError',
      message: 'allow: glob "10.0.0.1" is an IP address; the allowlist takes host names',
    });
  });

  test('throws a TypeError for a bad port or test address', () => {
    const { resolve } = staticResolver();
    assert.throws(() => createEgressPolicy({ resolve, ports: [443, 70000] }), {
      name: 'TypeError',
      message: 'ports: 70000 is not a port (an integer from 1 to 65535)',
    });
    assert.throws(() => createEgressPolicy({ resolve, ports: [] }), {
      name: 'TypeError',
      message: 'ports must list at least one port, e.g. [80, 443]',
    });
    assert.throws(() => createEgressPolicy({ resolve, testAddresses: ['netns.test'] }), {
      name: 'TypeError',
      message: 'testAddresses: "netns.test" is not an IP address',
    });
  });
});

describe('globProblem', () => {
  test('accepts host names with whole-label wildcards', () => {
    for (const glob of [
      'example.com',
      '*.example.com',
      'a-b.c',
      '*.*.example.com',
      'Docs.Example.ORG',
      'x1.io',
    ]) {
      assert.equal(globProblem(glob), undefined, glob);
    }
  });

  test('explains in one line why a glob is invalid', () => {
    const invalid: ReadonlyArray<readonly [string, string]> = [
      ['', 'glob is empty'],
      ['*', `glob "*" ends in '*'; its last label must be fixed`],
      ['example.*', `glob "example.*" ends in '*'; its last label must be fixed`],
      ['a*.com', `glob "a*.com" has '*' inside a label; '*' must be a whole label`],
      ['ex ample.com', `glob "ex ample.com" has a character other than a-z, 0-9, '-', '*' and '.'`],
      ['a_b.com', `glob "a_b.com" has a character other than a-z, 0-9, '-', '*' and '.'`],
      ['evil\n.com', `glob "evil\\n.com" has a character other than a-z, 0-9, '-', '*' and '.'`],
      ['10.0.0.1', 'glob "10.0.0.1" is an IP address; the allowlist takes host names'],
      ['::1', 'glob "::1" is an IP address; the allowlist takes host names'],
      ['10.0.*.1', 'glob "10.0.*.1" looks like an IP address; the allowlist takes host names'],
      ['a..b', 'glob "a..b" has an empty label'],
      ['.a.com', 'glob ".a.com" has an empty label'],
      ['a.com.', 'glob "a.com." has an empty label'],
      [`${'a'.repeat(64)}.com`, `glob "${'a'.repeat(64)}.com" has a label longer than 63 characters`],
    ];
    for (const [glob, reason] of invalid) {
      assert.equal(globProblem(glob), reason, JSON.stringify(glob));
      assert.doesNotMatch(reason, /[\r\n]/);
    }
  });
});
