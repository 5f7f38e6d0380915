// Routing decisions, the prompt wire format and reply splitting, as pure functions over plain data.
//
// The prompt an agent reads for a batch of chat messages:
//
//   <messages>
//   <note>2 earlier messages were left out</note>
//   <message sender="Ana" time="2026-11-27 09:05 (+01:00)">look<attachment path="/a.png"/></message>
//   </messages>
//
// - One `<message>` per chat message, oldest first, each on its own line. `<note>` appears only
//   when the size cap dropped messages, and is then the first child.
// - `sender` is the display name (the platform id if there is none); `time` is the wall clock in
//   the configured time zone, to the minute, with the UTC offset, so it is never ambiguous.
// - Attachments are `<attachment path="…"/>` children after the text, which is the only text node.
// - Chat text is untrusted. Text and attribute values lose C0/C1 control characters (except \n
//   and \t) and lone surrogates, then `& < > " '` become entities. Nothing else is touched, so no
//   input can open or close an element, yet the agent sees the text as written.
// - The whole prompt is at most `maxChars` UTF-16 code units. The newest messages that fit are
//   kept and the note says how many older ones were not; if even the newest alone is too long, its
//   text keeps its beginning and ends with `[… N characters left out]` (N in code points).

export interface PromptMessage {
  id: number;
  /** Platform id of the author. */
  sender: string;
  /** Display name; may be empty. */
  senderName: string;
  text: string;
  /** Epoch milliseconds. */
  at: number;
  /** Paths as the agent sees them in its sandbox. */
  attachments?: string[];
}

const DEFAULT_MAX_CHARS = 200_000;
// Below this a prompt could not hold one ordinary message; a smaller cap is a configuration mistake.
const MIN_MAX_CHARS = 1_000;

const OPEN = '<messages>\n';
const CLOSE = '</messages>';

/** The trigger for an assistant name: `Krabby` → `@Krabby`. */
export function triggerFor(assistantName: string): string {
  const name = assistantName.trim().replace(/^@+/, '');
  if (name === '') {
    throw new TypeError(
      `assistantName must be a name such as "Krabby"; got ${JSON.stringify(assistantName)}`,
    );
  }
  return `@${name}`;
}

// A letter, digit, combining mark or underscore. Marks count as part of a word so that
// "@Krabby\u0301" (a different name, spelled with a combining accent) does not match "@Krabby".
const WORD_CHAR = '[\\p{L}\\p{N}\\p{M}_]';

function triggerPattern(trigger: string): RegExp {
  if (trigger === '') throw new TypeError('trigger must be a non-empty string such as "@Krabby"; got ""');
  // In unicode mode only syntax characters may be escaped, so the class is exactly those.
  const literal = trigger.replace(/[\\^$.*+?()[\]{}|/]/g, '\\$&');
  return new RegExp(`(?<!${WORD_CHAR})${literal}(?!${WORD_CHAR})`, 'iu');
}

/**
 * Whether `text` mentions `trigger` as a whole word, ignoring case: it must not be preceded or
 * followed by a letter, digit, mark or underscore ("hi @KRABBY!" yes; "@Krabbyx", "a@Krabby" no).
 */
export function matchesTrigger(text: string, trigger: string): boolean {
  return triggerPattern(trigger).test(text);
}

/** Whether a batch of new messages should start (or feed) the group's agent. */
export function needsWake(
  messages: readonly { text: string; mayWake?: boolean; mentionsMe?: boolean }[],
  group: { isMain: boolean; requiresTrigger: boolean; trigger: string },
): boolean {
  // mayWake false: bots, or not the owner in a main chat. An @mention counts as the trigger.
  const candidates = messages.filter((m) => m.mayWake !== false);
  if (group.isMain || !group.requiresTrigger) return candidates.length > 0;
  const pattern = triggerPattern(group.trigger);
  return candidates.some((m) => m.mentionsMe === true || pattern.test(m.text));
}

// C0 controls except \t (09) and \n (0A), DEL, and C1 controls. \r goes too: "\r\n" becomes "\n".
// biome-ignore lint/suspicious/noControlCharactersInRegex: removing control characters is the point
const CONTROL_CHARS = /[\u0000-\u0008\u000B-\u001F\u007F-\u009F]/g;
// A high surrogate not followed by a low one, or a low one not preceded by a high one. No `u`
// flag: the pattern must see code units, not code points.
const LONE_SURROGATES = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;
const XML_SPECIALS = /[&<>"']/g;
const ENTITIES: Readonly<Record<string, string>> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&apos;',
};

function stripUnsafe(s: string): string {
  return s.replace(CONTROL_CHARS, '').replace(LONE_SURROGATES, '');
}

function escapeSpecials(s: string): string {
  return s.replace(XML_SPECIALS, (c) => ENTITIES[c] ?? c);
}

/**
 * Makes any string safe as XML text or a quoted attribute value: drops control characters (except
 * \n and \t) and lone surrogates, then escapes `& < > " '`. Everything else passes through.
 */
export function escapeXml(s: string): string {
  return escapeSpecials(stripUnsafe(s));
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

function wallClock(timezone: string): (at: number) => string {
  let format: Intl.DateTimeFormat;
  try {
    format = new Intl.DateTimeFormat('en-US', {
      timeZone: timezone,
      calendar: 'gregory',
      numberingSystem: 'latn',
      hourCycle: 'h23',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
    });
  } catch (cause) {
    throw new RangeError(
      `timezone must be an IANA time zone such as "Europe/Berlin"; got ${JSON.stringify(timezone)}`,
      { cause },
    );
  }
  return (at) => {
    if (!Number.isFinite(at)) throw new TypeError(`at must be epoch milliseconds; got ${at}`);
    const field: Partial<Record<Intl.DateTimeFormatPartTypes, number>> = {};
    for (const part of format.formatToParts(at)) field[part.type] = Number(part.value);
    const { year = 0, month = 1, day = 1, hour = 0, minute = 0, second = 0 } = field;
    // The offset is what the zone's wall clock reads minus the true time, both to the second.
    const wall = new Date(Date.UTC(2000, month - 1, day, hour, minute, second));
    wall.setUTCFullYear(year); // Date.UTC maps years 0–99 to 1900–1999
    const offset = Math.round((wall.getTime() - Math.floor(at / 1000) * 1000) / 1000);
    const abs = Math.abs(offset);
    const seconds = abs % 60; // only historical local mean times have these
    const zone = `${offset < 0 ? '-' : '+'}${pad2(Math.floor(abs / 3600))}:${pad2(Math.floor(abs / 60) % 60)}${seconds ? `:${pad2(seconds)}` : ''}`;
    return `${String(year).padStart(4, '0')}-${pad2(month)}-${pad2(day)} ${pad2(hour)}:${pad2(minute)} (${zone})`;
  };
}

/** `at` as the wall clock in `timezone`: `2026-11-27 09:05 (+01:00)`. */
export function formatTime(at: number, timezone: string): string {
  return wallClock(timezone)(at);
}

function noteFor(dropped: number): string {
  if (dropped === 0) return '';
  return `<note>${dropped} earlier ${dropped === 1 ? 'message was' : 'messages were'} left out</note>\n`;
}

function cutMarker(left: number): string {
  return `\n[… ${left} ${left === 1 ? 'character' : 'characters'} left out]`;
}

/** A message's line in three parts; the text has unsafe characters removed but is not yet escaped. */
function messageParts(message: PromptMessage, timeOf: (at: number) => string) {
  const sender = message.senderName || message.sender;
  const attachments = (message.attachments ?? []).map((p) => `<attachment path="${escapeXml(p)}"/>`);
  return {
    open: `<message sender="${escapeXml(sender)}" time="${escapeXml(timeOf(message.at))}">`,
    text: stripUnsafe(message.text),
    close: `${attachments.join('')}</message>`,
  };
}

/**
 * The longest beginning of `text` whose escaped form plus the cut marker fits in `budget`,
 * cut between code points so no surrogate pair is split.
 */
function truncateText(text: string, budget: number): string | undefined {
  const chars = Array.from(text);
  let kept = 0;
  let cost = 0;
  // Escaped length grows by at least 1 per character while the marker shrinks by at most 1, so
  // the first character that does not fit ends the search.
  for (const c of chars) {
    const next = cost + (ENTITIES[c]?.length ?? c.length);
    if (next + cutMarker(chars.length - kept - 1).length > budget) break;
    cost = next;
    kept += 1;
  }
  const marker = cutMarker(chars.length - kept);
  if (cost + marker.length > budget) return undefined;
  return escapeSpecials(chars.slice(0, kept).join('')) + marker;
}

/**
 * Formats a batch of messages (oldest first) as the prompt described at the top of this file.
 * Throws a RangeError for an unknown time zone, a `maxChars` below 1000, or a newest message whose
 * sender and attachments alone do not fit.
 */
export function formatPrompt(
  messages: readonly PromptMessage[],
  opts: { timezone: string; maxChars?: number },
): string {
  const maxChars = opts.maxChars ?? DEFAULT_MAX_CHARS;
  if (!Number.isInteger(maxChars) || maxChars < MIN_MAX_CHARS) {
    throw new RangeError(`maxChars must be an integer of at least ${MIN_MAX_CHARS}; got ${maxChars}`);
  }
  const timeOf = wallClock(opts.timezone);

  // Walk back from the newest message while the next older one still fits. Each message line is
  // longer than any change in the note's length, so once one does not fit, no older one can.
  const lines: string[] = [];
  let used = OPEN.length + CLOSE.length;
  for (let i = messages.length - 1; i >= 0; i--) {
    const parts = messageParts(messages[i]!, timeOf);
    const line = `${parts.open}${escapeSpecials(parts.text)}${parts.close}\n`;
    if (used + line.length + noteFor(i).length > maxChars) break;
    lines.push(line);
    used += line.length;
  }

  const newest = messages.at(-1);
  if (lines.length === 0 && newest) {
    const note = noteFor(messages.length - 1);
    const parts = messageParts(newest, timeOf);
    const fixed = OPEN.length + note.length + parts.open.length + parts.close.length + 1 + CLOSE.length;
    const text = truncateText(parts.text, maxChars - fixed);
    if (text === undefined) {
      throw new RangeError(
        `the newest message's sender, time and attachments take ${fixed} of maxChars (${maxChars}) characters, leaving no room for its text`,
      );
    }
    return `${OPEN}${note}${parts.open}${text}${parts.close}\n${CLOSE}`;
  }

  lines.reverse();
  return `${OPEN}${noteFor(messages.length - lines.length)}${lines.join('')}${CLOSE}`;
}

const INTERNAL_TAG = /(<\/?internal\s*>)/i;

/**
 * Joins the text on both sides of a removed block. A block that had lines to itself takes its line
 * break with it, and blank space around the cut never exceeds one blank line; the right side keeps
 * the indentation of its first line. Blank lines away from any cut are the agent's own and stay
 * (think of Python source).
 */
function joinAcrossCut(left: string, right: string): string {
  const tail = /[ \t\r\n]*$/.exec(left)?.[0] ?? '';
  const head = /^(?:[ \t\r]*\n)*/.exec(right)?.[0] ?? '';
  const ownLine = tail.includes('\n') && head.includes('\n');
  const newlines = (tail + head).split('\n').length - 1 - (ownLine ? 1 : 0);
  if (!ownLine && newlines < 3) return left + right;
  return `${left.slice(0, left.length - tail.length)}${'\n'.repeat(Math.min(newlines, 2))}${right.slice(head.length)}`;
}

/**
 * What the user sees of an agent's output: `<internal>…</internal>` blocks removed (any case,
 * nested, several; an unclosed one hides the rest; a stray closing tag is dropped), then trimmed.
 */
export function cleanOutput(text: string): string {
  // With a capturing group, split puts the tags at the odd indices.
  const pieces = text.split(INTERNAL_TAG);
  let depth = 0;
  let cut = false;
  let out = '';
  for (const [i, piece] of pieces.entries()) {
    if (i % 2 === 1) {
      depth = piece.startsWith('</') ? Math.max(0, depth - 1) : depth + 1;
      cut = true;
    } else if (depth === 0) {
      out = cut ? joinAcrossCut(out, piece) : out + piece;
      cut = false;
    }
  }
  return out.trim();
}

// Replies are split for platforms that cap a message's length (Discord: 2000 UTF-16 code units).
// Each chunk ends as late as it can at the best boundary its window offers: a blank line, a line
// break, a sentence end, a space, else between two grapheme clusters (at worst two code points),
// so an emoji is never torn. The whitespace at a cut is dropped, except the indentation of the line
// the next chunk starts on. A cut inside a ``` block closes the fence at the end of its chunk and
// reopens it, with the same info string, at the start of the next. A cut never falls inside a
// fence line, nor where one side of the block would hold its fences but none of its body.

const DEFAULT_SPLIT_LIMIT = 2_000;
// Below this a reopened fence and its closer (up to 40 characters) would crowd out the text.
const MIN_SPLIT_LIMIT = 100;
// A longer info string is not repeated on reopening, so a reopener takes at most 36 characters.
const MAX_REOPEN_INFO = 32;
const FENCE_CLOSER = '\n```';
// Like Discord, any line starting with ``` toggles a block; a line such as ```x``` is self-contained.
const FENCE_LINE = /^[ \t]*```/;
const SENTENCE_END = /[.!?。！？][)\]"'’”）」』]*$/;
// CJK sentences need no space after them: the cut goes straight after the mark (and any closers).
const CJK_SENTENCE_END = /[。！？][)\]"'’”）」』]*(?=[^\s)\]"'’”）」』])/g;
// Whitespace a line must not break at.
const NON_BREAKING = /^[\u00A0\u2007\u202F\uFEFF]+$/;

interface Fence {
  /** Start of the opening fence line. */
  openLine: number;
  /** Just past the opening backticks, and just past the closing ones (Infinity if never closed). */
  from: number;
  to: number;
  /** The body's first non-whitespace character and the end of its last (both the closing line if blank). */
  bodyStart: number;
  bodyEnd: number;
  /** End of the closing fence line (the text's end if never closed). */
  closeLineEnd: number;
  /** What a chunk that starts inside the block begins with. */
  reopen: string;
}

function findFences(text: string): Fence[] {
  const fences: Fence[] = [];
  let open: { openLine: number; from: number; bodyLine: number; reopen: string } | undefined;
  const close = (closeLine: number, to: number, closeLineEnd: number): void => {
    if (!open) return;
    const body = text.slice(open.bodyLine, closeLine);
    const blank = body.trim() === '';
    fences.push({
      openLine: open.openLine,
      from: open.from,
      to,
      bodyStart: blank ? closeLine : open.bodyLine + body.length - body.trimStart().length,
      bodyEnd: blank ? closeLine : open.bodyLine + body.trimEnd().length,
      closeLineEnd,
      reopen: open.reopen,
    });
    open = undefined;
  };
  for (let lineStart = 0; lineStart <= text.length; ) {
    const newline = text.indexOf('\n', lineStart);
    const lineEnd = newline === -1 ? text.length : newline;
    const ticks = FENCE_LINE.exec(text.slice(lineStart, lineEnd));
    if (ticks) {
      const from = lineStart + ticks[0].length;
      const info = text.slice(from, lineEnd).trim();
      if (open) close(lineStart, from, lineEnd);
      else if (!info.includes('```')) {
        const reopen = `\`\`\`${info.length <= MAX_REOPEN_INFO ? info : ''}\n`;
        open = { openLine: lineStart, from, bodyLine: lineEnd + 1, reopen };
      }
    }
    lineStart = lineEnd + 1;
  }
  close(text.length, Number.POSITIVE_INFINITY, text.length);
  return fences;
}

/** The block a chunk ending at `end` leaves open, if any. */
function openFenceAt(fences: readonly Fence[], end: number): Fence | undefined {
  return fences.find((f) => f.from <= end && end < f.to);
}

/** Whether a chunk ending at `end` would cut a fence line, or part a block's fences from its body. */
function breaksFence(fences: readonly Fence[], end: number): boolean {
  return fences.some(
    (f) => (end > f.openLine && end <= f.bodyStart) || (end >= f.bodyEnd && end < f.closeLineEnd),
  );
}

/**
 * Where the chunk after a cut at `from` starts: past the whitespace there, but at the start of the
 * line it lands on when that keeps an indentation shorter than `maxIndent`.
 */
function resumeAt(text: string, from: number, maxIndent: number): number {
  const space = /\s*/y;
  space.lastIndex = from;
  const run = space.exec(text)?.[0] ?? '';
  const stop = from + run.length;
  const newline = run.lastIndexOf('\n');
  // The text's start is a line start too; any other cut follows a non-space character.
  const lineStart = newline >= 0 ? from + newline + 1 : from === 0 ? 0 : stop;
  return stop - lineStart < maxIndent ? lineStart : stop;
}

/** Whether a cut at `at` would split a surrogate pair. */
function splitsPair(text: string, at: number): boolean {
  const high = text.charCodeAt(at - 1);
  const low = text.charCodeAt(at);
  return high >= 0xd800 && high <= 0xdbff && low >= 0xdc00 && low <= 0xdfff;
}

/** The latest of `ends` (ascending) that `fits`. */
function latest(ends: readonly number[], fits: (end: number) => boolean): number | undefined {
  for (let i = ends.length - 1; i >= 0; i--) if (fits(ends[i]!)) return ends[i];
  return undefined;
}

/** The fences (in text order, not overlapping) that reach into the range `from`..`to`. */
function fencesNear(fences: readonly Fence[], from: number, to: number): Fence[] {
  let low = 0;
  let high = fences.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (fences[mid]!.closeLineEnd <= from) low = mid + 1;
    else high = mid;
  }
  const near: Fence[] = [];
  for (let i = low; i < fences.length && fences[i]!.openLine < to; i++) near.push(fences[i]!);
  return near;
}

/**
 * Where the chunk starting at `pos` ends: the latest boundary of the best kind such that the chunk,
 * plus a fence closer if it ends inside a block, takes at most `room` characters.
 */
function chooseCutEnd(text: string, fences: readonly Fence[], pos: number, room: number): number {
  const content = pos + (/^\s*/.exec(text.slice(pos, pos + room))?.[0].length ?? 0);
  const fits = (end: number): boolean =>
    end > content &&
    !breaksFence(fences, end) &&
    end - pos + (openFenceAt(fences, end) ? FENCE_CLOSER.length : 0) <= room;

  const paragraphs: number[] = [];
  const lines: number[] = [];
  const sentences: number[] = [];
  const spaces: number[] = [];
  // Only boundaries inside the window matter; a run of whitespace that reaches past it is followed
  // to its end, since its line breaks decide its kind.
  const view = text.slice(pos, pos + room + 1);
  for (const m of view.matchAll(/\s+/g)) {
    const start = pos + m.index;
    const whole = /\s+/y;
    whole.lastIndex = start;
    const run = m.index + m[0].length < view.length ? m[0] : (whole.exec(text)?.[0] ?? m[0]);
    const newlines = run.split('\n').length - 1;
    if (newlines >= 2) paragraphs.push(start);
    else if (newlines === 1) lines.push(start);
    else if (NON_BREAKING.test(run)) continue;
    else if (SENTENCE_END.test(text.slice(Math.max(pos, start - 8), start))) sentences.push(start);
    else spaces.push(start);
  }
  for (const m of view.matchAll(CJK_SENTENCE_END)) sentences.push(pos + m.index + m[0].length);
  sentences.sort((a, b) => a - b);
  for (const ends of [paragraphs, lines, sentences, spaces]) {
    const end = latest(ends, fits);
    if (end !== undefined) return end;
  }

  // No boundary: cut inside a word, between grapheme clusters if the window has such a boundary.
  const last = Math.min(pos + room, text.length);
  const inWord = (end: number): boolean => /\S/.test(text[end - 1] ?? ' ') && /\S/.test(text[end] ?? ' ');
  const graphemes = new Intl.Segmenter(undefined, { granularity: 'grapheme' }).segment(
    text.slice(pos, last + 16),
  );
  for (let end = last; end > content; end--) {
    if (graphemes.containing(end - pos)?.index === end - pos && inWord(end) && fits(end)) return end;
  }
  for (let end = last; end > content; end--) {
    if (!splitsPair(text, end) && inWord(end) && fits(end)) return end;
  }

  // Only a pathological text gets here (say, a fence line longer than the limit): cut as late as a
  // closer still fits and let the fences fall where they may.
  let end = pos + room - FENCE_CLOSER.length;
  if (splitsPair(text, end)) end -= 1;
  return pos + text.slice(pos, end).trimEnd().length;
}

/**
 * Splits text into chunks of at most `limit` characters (UTF-16 code units, as Discord counts), on
 * natural boundaries, as described above. A text that fits is returned whole and untouched; a blank
 * one gives no chunks. Throws a RangeError for a `limit` that is not an integer of at least 100.
 */
export function splitMessage(text: string, limit = DEFAULT_SPLIT_LIMIT): string[] {
  if (!Number.isInteger(limit) || limit < MIN_SPLIT_LIMIT) {
    throw new RangeError(`limit must be an integer of at least ${MIN_SPLIT_LIMIT}; got ${limit}`);
  }
  if (text.trim() === '') return [];
  if (text.length <= limit) return [text];

  const fences = findFences(text);
  // Room for a reopener, a closer and some text besides any indentation kept at a chunk's start.
  const maxIndent = limit / 2;
  const end = text.trimEnd().length;
  const chunks: string[] = [];
  let reopen = '';
  let pos = resumeAt(text, 0, maxIndent);
  while (pos < end) {
    const room = limit - reopen.length;
    if (end - pos <= room) {
      chunks.push(reopen + text.slice(pos, end));
      break;
    }
    const nearby = fencesNear(fences, pos, pos + room);
    const cut = chooseCutEnd(text, nearby, pos, room);
    const open = openFenceAt(nearby, cut);
    chunks.push(reopen + text.slice(pos, cut) + (open ? FENCE_CLOSER : ''));
    reopen = open?.reopen ?? '';
    pos = resumeAt(text, cut, maxIndent);
  }
  return chunks;
}
