// A small line logger: `<iso time> <level> <message>`. Quiet (warnings and errors) unless
// LOG_LEVEL asks for more; the sink is injected so tests can capture lines.
export type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type Logger = Record<Level, (msg: string) => void>;

export function createLogger(level: Level, write: (line: string) => void, now = () => new Date()): Logger {
  const at = (l: Level) => (msg: string) => {
    if (ORDER[l] >= ORDER[level]) write(`${now().toISOString()} ${l} ${msg.replace(/\n/g, ' ⏎ ')}\n`);
  };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}
