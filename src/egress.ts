// The egress policy (pure): whether a sandbox may open a connection to `host:port` through the
// proxy, and if so to exactly which address. DESIGN invariant 5; research/egress.md §1 and §7.
//
// A decision is made before any dial, in this order:
//   1. `[…]` around an IPv6 literal and one trailing dot are dropped; names are lowercased.
//   2. The port must be in `ports` (default 80 and 443).
//   3. The host must be a syntactically valid name or IP literal.
//   4. `localhost`, `*.localhost`, `metadata`, `*.internal` (incl. metadata.google.internal) are
//      refused by name: they can reach the host or a cloud metadata service without any address
//      looking special (search domains turn `metadata` into metadata.google.internal).
//   5. With an allowlist, a name must match one of its globs and IP literals are refused.
//   6. Names are resolved through the injected `resolve` (IP literals are not); EVERY address must
//      be public, or the whole name is refused: a mixed answer would let a client retry until it
//      lands on the private one.
//   7. The caller dials the returned address, never the name again, so there is no second lookup
//      and no DNS-rebinding window.
//
// Addresses are judged after resolution, never as host strings: getaddrinfo maps `2130706433`,
// `127.1` and `0177.0.0.1` to 127.0.0.1 without any DNS traffic, and a client's `[::ffff:127.0.0.1]`
// reaches the proxy as `::ffff:7f00:1`. This module does no I/O of its own; production passes a
// resolver built on `dns.promises.lookup(host, { all: true, verbatim: true })`.
import { BlockList, isIP } from 'node:net';

/** All addresses of a name. Throws an Error with a `code` ('ENOTFOUND', …) when there are none. */
export type Resolve = (host: string) => Promise<string[]>;

export type EgressDecision = { ok: true; address: string; port: number } | { ok: false; reason: string };

export interface EgressPolicyOptions {
  /**
   * Host globs. When non-empty, only matching names are allowed. `*` stands for exactly one label:
   * `*.example.org` matches `docs.example.org`, not `a.b.example.org` nor `example.org`.
   */
  allow?: readonly string[];
  resolve: Resolve;
  /** Allowed destination ports; default [80, 443]. */
  ports?: readonly number[];
  /** Addresses treated as public. Test configuration only (the namespace test host). */
  testAddresses?: readonly string[];
}

const DEFAULT_PORTS: readonly number[] = [80, 443];

// Names that reach the host itself or a cloud metadata service, whatever they resolve to.
const DENIED_NAME = /(^|\.)localhost$|^metadata$|(^|\.)internal$/;

// A DNS name as it can appear in a URL: letters, digits, '-' and '_' (seen in the wild), labels of
// 1-63 characters, at most 253 in all. Non-ASCII names arrive as punycode.
const HOST_NAME = /^[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*$/;

// Special-purpose IPv4 blocks that are not globally reachable (IANA registry, RFC 6890).
const DENIED_V4: ReadonlyArray<readonly [string, number]> = [
  ['0.0.0.0', 8], // "this network"
  ['10.0.0.0', 8], // private
  ['100.64.0.0', 10], // carrier-grade NAT
  ['127.0.0.0', 8], // loopback
  ['169.254.0.0', 16], // link-local, incl. the cloud metadata service 169.254.169.254
  ['172.16.0.0', 12], // private
  ['192.0.0.0', 24], // IETF protocol assignments
  ['192.0.2.0', 24], // TEST-NET-1
  ['192.88.99.0', 24], // 6to4 relay anycast (deprecated)
  ['192.168.0.0', 16], // private
  ['198.18.0.0', 15], // benchmarking
  ['198.51.100.0', 24], // TEST-NET-2
  ['203.0.113.0', 24], // TEST-NET-3
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, incl. broadcast 255.255.255.255
];

// IPv6 blocks refused outright. Anything outside 2000::/3 (global unicast) is refused as well,
// except the forms that embed an IPv4 address, which are judged by that address.
const DENIED_V6: ReadonlyArray<readonly [string, number]> = [
  ['::', 128], // unspecified
  ['::1', 128], // loopback
  ['100::', 64], // discard-only
  ['2001::', 23], // IETF protocol assignments, incl. Teredo 2001::/32 (2001:4860:: etc. are outside)
  ['2001:db8::', 32], // documentation
  ['3fff::', 20], // documentation (RFC 9637)
  ['fc00::', 7], // unique local, incl. fd00:ec2::254 (the AWS metadata service)
  ['fe80::', 10], // link-local
  ['fec0::', 10], // site-local (deprecated)
  ['ff00::', 8], // multicast
];

function blockList(subnets: ReadonlyArray<readonly [string, number]>, type: 'ipv4' | 'ipv6'): BlockList {
  const list = new BlockList();
  for (const [network, prefix] of subnets) list.addSubnet(network, prefix, type);
  return list;
}

// Built once from the constant tables above and never changed afterwards.
const deniedV4 = blockList(DENIED_V4, 'ipv4');
const deniedV6 = blockList(DENIED_V6, 'ipv6');
const globalV6 = blockList([['2000::', 3]], 'ipv6');

/**
 * Whether a connection to `address` leaves the machine for the public internet. Anything
 * `net.isIP` rejects is not public, and so is an IPv6 address with a zone index.
 */
export function isPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 4) return !deniedV4.check(address, 'ipv4');
  if (family !== 6 || address.includes('%')) return false;
  if (deniedV6.check(address, 'ipv6')) return false;
  const embedded = embeddedIPv4(address);
  if (embedded !== undefined) return !deniedV4.check(embedded, 'ipv4');
  return globalV6.check(address, 'ipv6');
}

/**
 * The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`, also written `::ffff:7f00:1`),
 * IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) or 6to4 (`2002:AABB:CCDD::/48`) address;
 * the kernel or a translator would deliver to that IPv4 address.
 */
function embeddedIPv4(address: string): string | undefined {
  const w = ipv6Words(address);
  const zero = (from: number, to: number) => w.slice(from, to).every((x) => x === 0);
  if (zero(0, 5) && (w[5] === 0xffff || w[5] === 0)) return dotted(w[6], w[7]);
  if (w[0] === 0x64 && w[1] === 0xff9b && zero(2, 6)) return dotted(w[6], w[7]);
  if (w[0] === 0x2002) return dotted(w[1], w[2]);
  return undefined;
}

function dotted(high = 0, low = 0): string {
  return `${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`;
}

/** The eight 16-bit words of an IPv6 address that `net.isIP` accepted (no zone index). */
function ipv6Words(address: string): number[] {
  let text = address;
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number);
    text = `${text.slice(0, v4.index)}${(((a ?? 0) << 8) | (b ?? 0)).toString(16)}:${(((c ?? 0) << 8) | (d ?? 0)).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const words = (part: string) => (part === '' ? [] : part.split(':'));
  const parts =
    tail === undefined
      ? words(head)
      : [
          ...words(head),
          ...Array<string>(8 - words(head).length - words(tail).length).fill('0'),
          ...words(tail),
        ];
  return parts.map((part) => Number.parseInt(part, 16));
}

/**
 * One line saying why an allowlist glob is invalid, or undefined when it is fine. A glob is a host
 * name whose labels are a-z, 0-9 and '-', where a label may also be exactly '*'; the last label
 * must be fixed. Case does not matter.
 */
export function globProblem(glob: string): string | undefined {
  const name = quote(glob);
  if (glob === '') return 'glob is empty';
  if (isIP(glob) !== 0) return `glob ${name} is an IP address; the allowlist takes host names`;
  if (glob.length > 253) return `glob ${name} is longer than 253 characters`;
  if (/[^a-z0-9.*-]/i.test(glob)) {
    return `glob ${name} has a character other than a-z, 0-9, '-', '*' and '.'`;
  }
  const labels = glob.split('.');
  if (labels.some((label) => label === '')) return `glob ${name} has an empty label`;
  if (labels.some((label) => label.length > 63)) return `glob ${name} has a label longer than 63 characters`;
  if (labels.some((label) => label.includes('*') && label !== '*')) {
    return `glob ${name} has '*' inside a label; '*' must be a whole label`;
  }
  const last = labels[labels.length - 1] ?? '';
  if (last === '*') return `glob ${name} ends in '*'; its last label must be fixed`;
  if (/^\d+$/.test(last)) return `glob ${name} looks like an IP address; the allowlist takes host names`;
  return undefined;
}

/**
 * The policy for one group's proxy. Throws a TypeError naming the option and the bad value when
 * `allow`, `ports` or `testAddresses` holds something invalid.
 */
export function createEgressPolicy(
  o: EgressPolicyOptions,
): (host: string, port: number) => Promise<EgressDecision> {
  const { resolve } = o;
  const ports = o.ports ?? DEFAULT_PORTS;
  if (typeof resolve !== 'function')
    throw new TypeError('resolve must be a function (host) => Promise<string[]>');
  if (ports.length === 0) throw new TypeError('ports must list at least one port, e.g. [80, 443]');
  for (const port of ports) {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new TypeError(`ports: ${port} is not a port (an integer from 1 to 65535)`);
    }
  }
  const globs = (o.allow ?? []).map((glob) => {
    const problem = globProblem(glob);
    if (problem !== undefined) throw new TypeError(`allow: ${problem}`);
    return glob.toLowerCase().split('.');
  });
  const family = (address: string) => (isIP(address) === 4 ? 'ipv4' : 'ipv6');
  const testAddresses = new BlockList();
  for (const address of o.testAddresses ?? []) {
    if (isIP(address) === 0) throw new TypeError(`testAddresses: ${quote(address)} is not an IP address`);
    testAddresses.addAddress(address, family(address));
  }
  // Only called on addresses `isIP` accepted.
  const acceptable = (address: string) =>
    isPublicAddress(address) || testAddresses.check(address, family(address));

  return async function decide(hostIn: string, port: number): Promise<EgressDecision> {
    const host = normalizeHost(hostIn);
    if (!ports.includes(port)) return refuse(`port ${port} not allowed`);
    const literal = isIP(host) !== 0;
    if (!literal && !HOST_NAME.test(host)) return refuse(`host ${quote(hostIn)} is not a valid name`);
    if (!literal && DENIED_NAME.test(host)) return refuse(`name ${host} refused`);
    if (globs.length > 0) {
      if (literal) return refuse('IP literals are refused when an allowlist is set');
      if (!globs.some((glob) => matches(glob, host))) return refuse(`${host} not in allowlist`);
    }

    let addresses: string[];
    try {
      addresses = literal ? [host] : await resolve(host);
    } catch (error) {
      return refuse(`resolve ${host}: ${errorCode(error)}`);
    }
    const first = addresses[0];
    if (first === undefined) return refuse(`resolve ${host}: no addresses`);
    const malformed = addresses.find((address) => isIP(address) === 0);
    if (malformed !== undefined)
      return refuse(`resolve ${host}: ${quote(String(malformed))} is not an address`);
    const bad = addresses.find((address) => !acceptable(address));
    if (bad !== undefined) return refuse(`${host} resolves to non-public ${bad}`);
    return { ok: true, address: first, port };
  };
}

function refuse(reason: string): EgressDecision {
  return { ok: false, reason };
}

/** Drops `[…]` around an IPv6 literal and one trailing dot; lowercases names. */
function normalizeHost(host: string): string {
  const inner = /^\[(.*)\]$/.exec(host)?.[1];
  if (inner !== undefined && isIP(inner) === 6) return inner;
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  return isIP(name) === 0 ? name.toLowerCase() : name;
}

function matches(glob: readonly string[], host: string): boolean {
  const labels = host.split('.');
  return labels.length === glob.length && glob.every((label, i) => label === '*' || label === labels[i]);
}

/** The resolver error's code ('ENOTFOUND', …), or its message on one line when it has none. */
function errorCode(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && /^[A-Z0-9_]{1,40}$/.test(code)) return code;
  const message = error instanceof Error ? error.message : String(error);
  return (
    message
      .replace(/[^\x20-\x7e]+/g, ' ')
      .trim()
      .slice(0, 200) || 'failed'
  );
}

/** A JSON-style quoted string with everything outside printable ASCII escaped: always one line. */
function quote(text: string): string {
  return JSON.stringify(text).replace(
    /[^\x20-\x7e]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}
