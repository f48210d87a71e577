#!/usr/bin/env bash
# Run the whole test suite. The namespace tests need root (CI runs as root) and the
# Debian test peers listed in scripts/test-packages.txt; missing ones are installed
# with apt-get (announced) when running as root on Debian, else named.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
while read -r pkg cmd; do
  case "$pkg" in ''|'#'*) continue ;; esac
  if [ "$cmd" = "-" ]; then
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
  elif ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1; then
    missing+=("$pkg")
  fi
done < scripts/test-packages.txt
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing missing test peers: ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "test.sh: missing test peers: ${missing[*]} (apt-get install ${missing[*]}); namespace tests will fail" >&2
  fi
fi

cargo build --release --locked --bins
log=$(mktemp /tmp/sockstun-test.XXXXXX)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --locked "$@" 2>&1 | tee "$log" || status=$?
# In CI (or with SOCKSTUN_FUZZ_SMOKE=1): every fuzz target for 20 s, a smoke
# that the targets build and hold on their seeds (docs/testing.md). It needs
# the nightly toolchain; without it the smoke is skipped, loudly.
if [ "${CI:-}" = true ] || [ "${SOCKSTUN_FUZZ_SMOKE:-}" = 1 ]; then
  fuzz_rc=0
  scripts/fuzz.sh 20 || fuzz_rc=$?
  case $fuzz_rc in
    0) ;;
    2) echo "test.sh: *** fuzz smoke NOT RUN: a tool is missing (see above) ***" >&2 ;;
    *) status=$fuzz_rc ;;
  esac
fi
# In CI (or with SOCKSTUN_PACKAGE_CHECK=1): the Debian package is built and
# checked (scripts/package.sh --check: its contents, lintian, systemd-analyze
# verify on its units). It installs cargo-deb if missing.
if [ "${CI:-}" = true ] || [ "${SOCKSTUN_PACKAGE_CHECK:-}" = 1 ]; then
  if scripts/package.sh --check; then
    echo "test.sh: package check passed"
  else
    echo "test.sh: *** package check FAILED (see above) ***" >&2
    status=1
  fi
fi
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
