#!/usr/bin/env bash
# Builds the agent image: container/build.sh [image]   (default: $CONTAINER_IMAGE or nanoclaw-agent:latest)
# WITH_BROWSER=0 leaves Chromium and agent-browser out. NANOCLAW_RUNTIME picks docker, podman or
# container (Apple); otherwise the first one found. Needs `npm ci` first: the Claude Code binary
# must be exactly the SDK's version, so it comes from the SDK's own platform package.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-${CONTAINER_IMAGE:-nanoclaw-agent:latest}}
with_browser=${WITH_BROWSER:-1}
agent_browser_version=0.41.2
runtime=${NANOCLAW_RUNTIME:-}
if [ -z "$runtime" ]; then
  for candidate in docker podman container; do
    if command -v "$candidate" >/dev/null 2>&1; then runtime=$candidate; break; fi
  done
fi
[ -n "$runtime" ] || { echo "build.sh: no docker, podman or container (Apple) command found" >&2; exit 1; }

sdk_json=node_modules/@anthropic-ai/claude-agent-sdk/package.json
[ -f "$sdk_json" ] || { echo "build.sh: run npm ci first (no $sdk_json)" >&2; exit 1; }
sdk_version=$(node -p "require('./$sdk_json').version")
cc_version=$(node -p "require('./$sdk_json').claudeCodeVersion")
case "$(uname -m)" in
  x86_64 | amd64) arch=x64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "build.sh: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp container/Dockerfile container/bridge.cjs container/start.sh "$ctx/"
mkdir "$ctx/browser"

# The Linux binary of the SDK's platform package: from node_modules when it is there (Linux), else
# fetched from the npm registry at exactly the SDK's version (a macOS host building a Linux image).
pkg=@anthropic-ai/claude-agent-sdk-linux-$arch
if [ -f "node_modules/$pkg/package.json" ] &&
  [ "$(node -p "require('./node_modules/$pkg/package.json').version")" = "$sdk_version" ]; then
  cp "node_modules/$pkg/claude" "$ctx/claude"
else
  (cd "$ctx" && npm pack --silent "$pkg@$sdk_version" >/dev/null && tar xzf ./*.tgz package/claude &&
    mv package/claude claude && rm -rf package ./*.tgz)
fi
if [ "$with_browser" = 1 ]; then
  (cd "$ctx" && npm pack --silent "agent-browser@$agent_browser_version" >/dev/null &&
    tar xzf ./*.tgz "package/bin/agent-browser-linux-$arch" &&
    mv "package/bin/agent-browser-linux-$arch" browser/agent-browser && rm -rf package ./*.tgz)
fi

echo "build.sh: building $image with $runtime (Claude Code $cc_version, browser: $with_browser)"
"$runtime" build \
  --build-arg "WITH_BROWSER=$with_browser" \
  --build-arg "CLAUDE_CODE_VERSION=$cc_version" \
  -t "$image" -f "$ctx/Dockerfile" "$ctx"
