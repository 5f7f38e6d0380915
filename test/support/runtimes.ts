// The sandbox runtimes the end-to-end suites run on: bwrap always; podman too when .ci/run has
// switched the container tier on (NANOCLAW_TEST_PODMAN=1: it installed podman and built the image),
// and for the flow test also docker: the docker CLI talking to podman's Docker-compatible API
// (DOCKER_HOST, started by .ci/podman-setup). Under CI=true the tier must be on and ready: a
// missing prerequisite fails the run, never skips.

import { DIALECTS, imageProblem, runtimeEnv, sdkClaudeCodeVersion } from '../../src/sandbox/container.js';
import { which } from '../../src/sandbox/detect.js';

/** The agent image with the browser, when the container tier is on (it must then be built). */
export function browserImageUnderTest(): string | undefined {
  if (!runtimesUnderTest().includes('podman')) return undefined;
  const image = 'nanoclaw-agent:browser';
  const podman = which('podman', process.env.PATH) as string;
  const problem = imageProblem(
    DIALECTS.podman,
    podman,
    { image, claudeCodeVersion: sdkClaudeCodeVersion() },
    runtimeEnv(process.env),
  );
  if (problem) throw new Error(`NANOCLAW_TEST_PODMAN=1 but ${problem}`);
  return image;
}

export type TestRuntime = 'bwrap' | 'podman' | 'docker';

export function runtimesUnderTest(opts: { docker?: boolean } = {}): TestRuntime[] {
  const on = process.env.NANOCLAW_TEST_PODMAN === '1';
  if (!on) {
    if (process.env.CI === 'true') {
      throw new Error('CI=true needs the podman tier: run .ci/run (it exports NANOCLAW_TEST_PODMAN=1)');
    }
    return ['bwrap'];
  }
  const kinds: ('podman' | 'docker')[] = opts.docker ? ['podman', 'docker'] : ['podman'];
  for (const kind of kinds) {
    const bin = which(kind, process.env.PATH);
    if (!bin) throw new Error(`NANOCLAW_TEST_PODMAN=1 but ${kind} is not installed: run .ci/podman-setup`);
    if (kind === 'docker' && !process.env.DOCKER_HOST) {
      throw new Error('NANOCLAW_TEST_PODMAN=1 but DOCKER_HOST is not set: source .ci/podman-setup');
    }
    const problem = imageProblem(
      DIALECTS[kind],
      bin,
      { image: 'nanoclaw-agent:latest', claudeCodeVersion: sdkClaudeCodeVersion() },
      runtimeEnv(process.env),
    );
    if (problem) throw new Error(`NANOCLAW_TEST_PODMAN=1 but ${kind}: ${problem}`);
  }
  return ['bwrap', ...kinds];
}
