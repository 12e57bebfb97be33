#!/usr/bin/env bash
# Renders runner's HTML report pages headless and checks their plots
# (check-pages.mjs says what is checked). Without Chromium it skips, exit 0,
# so the check runs wherever Chromium is installed (apt-get install chromium).
#
#   tools/report/check-pages.sh [--screenshot DIR] PAGE.html...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if [ -z "${CHROMIUM:-}" ]; then
  if [ -x /usr/bin/chromium ]; then CHROMIUM=/usr/bin/chromium
  elif command -v chromium >/dev/null; then CHROMIUM="$(command -v chromium)"
  else
    echo "check-pages: skipped: chromium not installed (apt-get install chromium)"
    exit 0
  fi
fi
export CHROMIUM
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "check-pages: skipped: node and npm not installed (apt-get install nodejs npm)"
  exit 0
fi

# Install playwright-core from the lock unless node_modules already holds it
# (npm writes node_modules/.package-lock.json on every install). npm ci
# downloads no browser: playwright-core drives the Chromium found above.
if [ "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]; then
  (cd "$here" && npm ci --silent --no-audit --no-fund)
fi
exec node "$here/check-pages.mjs" "$@"
