// The channels installed by the add-* skills (.claude/skills/add-*): each skill adds its import
// and its factory below (scripts/apply-skill.mjs). A factory returns undefined when its
// variables are not set, so an installed channel costs nothing until it is configured.
import type { ChannelFactory } from './channel.js';
// add-skill imports

export const addedChannels: ChannelFactory[] = [
  // add-skill channels
];
