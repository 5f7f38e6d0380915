// The sandbox runtimes the end-to-end suites run on: bwrap always; podman too when .ci/run has
// switched the container tier on (NANOCLAW_TEST_PODMAN=1: it installed podman and built the image).
// Under CI=true the tier must be on and ready: a missing prerequisite fails the run, never skips.

import { DIALECTS, imageProblem, runtimeEnv, sdkClaudeCodeVersion } from '../../src/sandbox/container.js';
import { which } from '../../src/sandbox/detect.js';

export type TestRuntime = 'bwrap' | 'podman';

export function runtimesUnderTest(): TestRuntime[] {
  const on = process.env.NANOCLAW_TEST_PODMAN === '1';
  if (!on) {
    if (process.env.CI === 'true') {
      throw new Error('CI=true needs the podman tier: run .ci/run (it exports NANOCLAW_TEST_PODMAN=1)');
    }
    return ['bwrap'];
  }
  const podman = which('podman', process.env.PATH);
  if (!podman) throw new Error('NANOCLAW_TEST_PODMAN=1 but podman is not installed: run .ci/podman-setup');
  const problem = imageProblem(
    DIALECTS.podman,
    podman,
    { image: 'nanoclaw-agent:latest', claudeCodeVersion: sdkClaudeCodeVersion() },
    runtimeEnv(process.env),
  );
  if (problem) throw new Error(`NANOCLAW_TEST_PODMAN=1 but ${problem}`);
  return ['bwrap', 'podman'];
}
