#!/usr/bin/env bash
# Puts a headless browser in place for the TypeScript package's browser test
# (clients/typescript/test/demo.test.mjs) and prints its path on the last line:
# Debian's chromium, installed with apt-get when it is missing (the machine reaches
# Debian's package mirrors; it cannot download Chrome builds). playwright-core, which
# drives it, comes from the package's lockfile.
set -euo pipefail

browser=$(command -v chromium || true)
if [[ -z "$browser" ]]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "hack/browser.sh: chromium is not installed and there is no apt-get to install it" >&2
    exit 1
  fi
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  echo "hack/browser.sh: installing Debian's chromium" >&2
  $sudo apt-get install -y --no-install-recommends chromium >&2 ||
    { $sudo apt-get update >&2 && $sudo apt-get install -y --no-install-recommends chromium >&2; }
  browser=$(command -v chromium)
fi
# Its version, for the test log (`chromium --version` trips on its own wrapper script
# on some hosts, so ask the binary behind it).
version=$("$browser" --version 2>/dev/null | grep -o 'Chromium [0-9.]*' || echo "Chromium (version unknown)")
echo "hack/browser.sh: $version at $browser" >&2
echo "$browser"
