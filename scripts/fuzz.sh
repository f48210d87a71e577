#!/usr/bin/env bash
# Fuzz every parser of outside bytes with cargo-fuzz (libFuzzer), one target
# after the other, SECONDS each (default 60).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Each target starts from a copy of its seed corpus (fuzz/corpus/<target>) in
# a scratch directory, so the committed corpus never grows. Prints, per
# target, libFuzzer's final line (#executions, cov, ft, corpus) and exec/s,
# and exits non-zero if any target found a crash, a failed invariant, a leak
# or a hang (inputs in fuzz/artifacts/<target>/).
#
# Environment: FUZZ_LOGS=DIR keeps each target's log there (default: the
# scratch directory, removed at the end); FUZZ_WORK=DIR keeps the working
# corpora there. Needs the nightly toolchain; installs cargo-fuzz if missing.
set -euo pipefail

secs=${1:-60}
shift || true
case $secs in
'' | *[!0-9]*)
	echo "usage: $0 [SECONDS] [TARGET...]" >&2
	exit 2
	;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fuzz="$root/fuzz"
# CI shells (and root's) may not have rustup's bin directory on PATH.
if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
	PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

if ! command -v cargo >/dev/null; then
	echo "fuzz.sh: cargo not found (install Rust with rustup)" >&2
	exit 2
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
	echo "fuzz.sh: the nightly toolchain is missing: rustup toolchain install nightly" >&2
	exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "fuzz.sh: installing cargo-fuzz"
	cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
	targets=("$@")
else
	mapfile -t targets < <(cd "$fuzz" && cargo +nightly fuzz list)
fi

scratch=$(mktemp -d /tmp/sockstun-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
work=${FUZZ_WORK:-$scratch/corpus}
logs=${FUZZ_LOGS:-$scratch/logs}
mkdir -p "$work" "$logs"

echo "fuzz.sh: building ${#targets[@]} targets"
build() {
	if [ $# -gt 0 ] && [ "$*" != "$(cd "$fuzz" && cargo +nightly fuzz list | xargs)" ]; then
		for t in "$@"; do (cd "$fuzz" && cargo +nightly fuzz build "$t") || return 1; done
	else
		(cd "$fuzz" && cargo +nightly fuzz build)
	fi
}
if ! build "${targets[@]}" >"$logs/build.log" 2>&1; then
	tail -n 30 "$logs/build.log" >&2
	echo "fuzz.sh: build failed" >&2
	exit 1
fi

failed=()
summary=()
for t in "${targets[@]}"; do
	rm -rf "${work:?}/$t"
	mkdir -p "$work/$t" "$fuzz/artifacts/$t"
	if [ -d "$fuzz/corpus/$t" ]; then
		cp -r "$fuzz/corpus/$t/." "$work/$t/"
	fi
	log="$logs/$t.log"
	echo "fuzz.sh: $t for ${secs}s (log $log)"
	rc=0
	# One libFuzzer process per target (no -jobs): others share the machine.
	# -timeout: an input that takes 20 s is a hang, reported as a finding.
	(cd "$fuzz" && cargo +nightly fuzz run "$t" "$work/$t" -- \
		-max_total_time="$secs" -timeout=20 -print_final_stats=1) >"$log" 2>&1 || rc=$?
	last=$(grep -a -E '^#[0-9]+' "$log" | tail -n 1 || true)
	execs=$(grep -a -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
	rate=$(grep -a -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
	corpus=$(find "$work/$t" -type f | wc -l)
	line="$t: rc=$rc execs=$execs exec/s=$rate corpus_files=$corpus | $last"
	echo "  $line"
	summary+=("$line")
	if [ "$rc" -ne 0 ]; then
		failed+=("$t")
		grep -a -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -n 8 | sed 's/^/    /'
	fi
done

echo
echo "fuzz.sh: ${secs}s per target"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzz.sh: FINDINGS in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
	exit 1
fi
echo "fuzz.sh: no findings"
