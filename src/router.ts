// Routing decisions and the prompt wire format, as pure functions over plain data.
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
  messages: readonly { text: string }[],
  group: { isMain: boolean; requiresTrigger: boolean; trigger: string },
): boolean {
  if (group.isMain || !group.requiresTrigger) return messages.length > 0;
  const pattern = triggerPattern(group.trigger);
  return messages.some((message) => pattern.test(message.text));
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

interface MessageParts {
  open: string;
  /** Text with unsafe characters removed, not yet escaped. */
  text: string;
  close: string;
}

function messageParts(message: PromptMessage, timeOf: (at: number) => string): MessageParts {
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
