// `npm run dev`: the compiler in watch mode, and the orchestrator under `node --watch`, restarted
// whenever the compiled code changes. A restart is a SIGTERM first: the orchestrator stops intake,
// closes live agents and flushes the outbox before the new one starts (node waits for the exit).
import { spawn } from 'node:child_process';

const tsc = spawn('npx', ['tsc', '-p', '.', '--watch', '--preserveWatchOutput'], { stdio: 'inherit' });
const app = spawn(
  process.execPath,
  ['--watch-path=dist/src', '--watch-preserve-output', 'dist/src/cli.js', 'start'],
  { stdio: 'inherit' },
);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    app.kill(signal);
    tsc.kill(signal);
  });
}
app.on('exit', (code) => {
  tsc.kill('SIGTERM');
  process.exit(code ?? 0);
});
