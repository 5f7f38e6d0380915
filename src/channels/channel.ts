// What every channel is to the orchestrator: a way in (it calls `ingest` for each platform
// message) and a way out (`send` for each outbox row, `setWorking` for the typing indicator).
import type { Config } from '../config.js';
import type { Db } from '../db.js';
import type { Logger } from '../log.js';

export interface InboundMessage {
  /** `<channel>:<id>`, e.g. `web:main`, `discord:123`. */
  chatJid: string;
  chatName: string;
  /** The platform's message id (or the web client's id): unique per chat, makes ingest idempotent. */
  platformId: string;
  sender: string;
  senderName: string;
  text: string;
  at: number;
  isBot?: boolean;
  fromMe?: boolean;
  /** False when the message may never wake the agent (bots, non-owners in a main chat). */
  mayWake?: boolean;
  /** An @mention of the assistant: counts as the trigger. */
  mentionsMe?: boolean;
  /** Posted in this thread under the chat; replies go there. */
  threadId?: string;
  /** Guest paths (under /workspace/group) of attachments already downloaded. */
  attachments?: string[];
}

export interface OutboundMessage {
  outboxId: number;
  chatJid: string;
  text: string;
  sender?: string;
  /** The platform message the reply references. */
  replyTo?: string;
  threadId?: string;
  /** Host path of a file in the group folder to post with the text. */
  file?: string;
}

export interface Channel {
  readonly name: string;
  owns(chatJid: string): boolean;
  start(): Promise<void>;
  /** Stops taking messages in; sends may still happen until `close`. */
  stop(): Promise<void>;
  /** Releases connections and servers, after the outbox was flushed. */
  close(): Promise<void>;
  send(msg: OutboundMessage): Promise<{ platformId?: string }>;
  setWorking(chatJid: string, working: boolean): void;
  /** Whether it is connected to its platform now (for status); without it: while it runs. */
  connected?(): boolean;
}

/** What a channel added by a skill (src/channels/added.ts) is given at start. */
export interface ChannelContext {
  config: Config;
  db: Db;
  log: Logger;
  now: () => number;
  ingest: (m: InboundMessage) => IngestResult;
  /** Registers `jid` as a main chat (folder `<channel>-main`) unless it is registered already. */
  registerMain(jid: string): void;
}

/**
 * Makes a skill's channel from `config.vars`: undefined when its variables are not set; throws
 * ConfigError (one line, naming the variable) when they are set wrong.
 */
export type ChannelFactory = (ctx: ChannelContext) => Channel | undefined | Promise<Channel | undefined>;

export type IngestResult =
  | { stored: true; id: number; duplicate: boolean }
  | { stored: false; reason: string };

/** Thrown by `send` with a hint for the outbox's backoff (e.g. a 429's retry_after). */
export class ChannelError extends Error {
  override name = 'ChannelError';
  constructor(
    message: string,
    readonly retryAfterMs?: number,
    readonly permanent = false,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}
