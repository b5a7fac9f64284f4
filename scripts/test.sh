#!/usr/bin/env bash
# The test suite, set-up included: `bash scripts/test.sh [pytest args]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

# Chromium for the page's browser tests, only for the tests (Playwright drives Debian's package; its own browser
# download needs the internet). The tests skip with a reason where it is missing.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "note: could not install chromium (the browser tests of the page will be skipped)" >&2
fi
exec "${PYTHON:-python3}" -m pytest -q "$@"
