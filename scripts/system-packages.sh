#!/usr/bin/env bash
# Install the Debian packages the test suite uses, when they are missing and this user can:
#   chromium   - headless browser for the dashboard's Playwright tests (Playwright's own download is unreachable)
#   bubblewrap - namespace isolation for the code-execution sandbox
# Never fails the build: without them the tests that need them skip with a message naming the package.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: chromium and bubblewrap present"
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system packages: missing ${need[*]} and cannot install them here (need root and apt-get); the tests that use them will skip"
  exit 0
fi
echo "system packages: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
  echo "system packages: apt-get could not install ${need[*]}; the tests that use them will skip"
fi
exit 0
