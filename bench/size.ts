// The core's size (DESIGN budget: src/ at most 5,000 lines, tests excluded): every file under
// src/ with its lines and its code lines (without blank and comment-only lines), largest first.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { projectRoot } from '../src/config.js';

const src = path.join(projectRoot(), 'src');
const rows = readdirSync(src, { recursive: true, encoding: 'utf8' })
  .filter((f) => f.endsWith('.ts'))
  .map((f) => {
    const lines = readFileSync(path.join(src, f), 'utf8').split('\n');
    if (lines.at(-1) === '') lines.pop();
    const code = lines.filter((l) => !/^\s*$/.test(l) && !/^\s*(\/\/|\/\*|\*)/.test(l)).length;
    return { file: `src/${f}`, lines: lines.length, code };
  })
  .sort((a, b) => b.lines - a.lines);
for (const r of rows) console.log(`${String(r.lines).padStart(6)} ${String(r.code).padStart(6)}  ${r.file}`);
const total = rows.reduce((t, r) => ({ lines: t.lines + r.lines, code: t.code + r.code }), {
  lines: 0,
  code: 0,
});
console.log(
  `${String(total.lines).padStart(6)} ${String(total.code).padStart(6)}  total (lines, code lines) in ${rows.length} files; budget 5000 lines`,
);
