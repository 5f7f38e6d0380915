// Wiring only: load the config, start the orchestrator, handle signals. The only module that
// calls process.exit or installs process handlers.
import { ChannelError } from './channels/channel.js';
import { ConfigError, loadConfig } from './config.js';
import { createLogger } from './log.js';
import { startOrchestrator } from './orchestrator.js';
import { SandboxError } from './sandbox/index.js';

export async function main(): Promise<void> {
  // Information on stdout, warnings and errors on stderr: the service keeps them in two logs.
  const sink = (line: string) =>
    (/^\S+ (warn|error) /.test(line) ? process.stderr : process.stdout).write(line);
  let log = createLogger('info', sink);
  let orchestrator: Awaited<ReturnType<typeof startOrchestrator>>;
  try {
    const config = loadConfig(process.env);
    log = createLogger(config.logLevel, sink);
    orchestrator = await startOrchestrator(config, { log, env: process.env });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const known = err instanceof ConfigError || err instanceof SandboxError || err instanceof ChannelError;
    if (known) process.stderr.write(`nanoclaw: ${e.message}\n`);
    else if (e.code === 'EADDRINUSE')
      process.stderr.write(`nanoclaw: ${e.message}: is another NanoClaw running? Set WEB_PORT.\n`);
    else process.stderr.write(`nanoclaw: failed to start: ${e.stack ?? String(err)}\n`);
    process.exit(1);
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info(`${signal}: stopping`);
    orchestrator.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error(`stop failed: ${(err as Error).message}`);
        process.exit(1);
      },
    );
  };
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => stop(signal));
  process.on('unhandledRejection', (err) => log.error(`unhandled rejection: ${String(err)}`));
  log.info('NanoClaw is running');
}
