// Parses a container runtime's `run` argv against a table of the options it may take and how many
// values each has: an option the runtime does not have, or a missing value, fails the test.
import assert from 'node:assert/strict';

export function parseRunArgs(args: readonly string[], arity: Readonly<Record<string, number>>) {
  assert.equal(args[0], 'run');
  const options: { name: string; args: string[] }[] = [];
  let i = 1;
  while (i < args.length && args[i]?.startsWith('-')) {
    const name = args[i] ?? '';
    const n = arity[name];
    assert.ok(n !== undefined, `unexpected option ${name}`);
    const values = args.slice(i + 1, i + 1 + n);
    assert.equal(values.length, n, `${name} is missing its value`);
    options.push({ name, args: values });
    i += 1 + n;
  }
  const values = (name: string) => options.filter((o) => o.name === name).map((o) => o.args[0] ?? '');
  return { options, values, image: args[i], command: args.slice(i + 1) };
}

/** `-e` values by variable name. */
export const envOf = (values: string[]) => new Map(values.map((e) => [e.split('=')[0], e] as const));
