#!/bin/sh
# Every sandbox's entry: start the egress bridge in the background (its stdin is not the CLI's),
# then become the command. Without NANOCLAW_EGRESS_SOCKET there is no bridge.
if [ -n "$NANOCLAW_EGRESS_SOCKET" ]; then
  nice -n 19 /opt/nanoclaw/bin/node /opt/nanoclaw/bridge.cjs "$NANOCLAW_BRIDGE_PORT" "$NANOCLAW_EGRESS_SOCKET" \
    </dev/null >/dev/null 2>&1 &
fi
exec "$@"
