#!/bin/sh
# Builds the libFuzzer targets with clang and runs each for SECONDS (default 30; with the
# targets listed below that keeps a CI run near 4 minutes).
#
#   tests/fuzz/run.sh [SECONDS]
#
# Build dir: $PF_FUZZ_BUILDDIR, default build-fuzz/ in the source tree (git-ignored). The whole
# project is compiled with ASan+UBSan (meson's b_sanitize) and coverage instrumentation
# (-Dfuzz=true adds -fsanitize=fuzzer-no-link), so the parsers themselves are checked, not only
# the target files. Each run works on a temporary copy of the committed seed corpus, so the
# corpus in git is never polluted. Crash inputs go to $builddir/fuzz-artifacts/.
# Prints "fuzz_<target>: N runs" per target; exits non-zero if any target crashes.
set -eu

secs=${1:-30}
root=$(cd "$(dirname "$0")/../.." && pwd)
builddir=${PF_FUZZ_BUILDDIR:-$root/build-fuzz}

if [ ! -f "$builddir/build.ninja" ]; then
	CC=clang meson setup "$builddir" "$root" \
		-Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false \
		-Dintegration=disabled -Dbuildtype=debugoptimized
fi
# One per parser of bytes a peer (client, server, scraper) or a config file controls; keep in
# step with the list in tests/meson.build.
targets="startup header scram config authfile server_msg metrics admin client_auth names prepared saslprep"
ninja -C "$builddir" $(for t in $targets; do printf 'tests/fuzz_%s ' "$t"; done)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
artifacts="$builddir/fuzz-artifacts"
mkdir -p "$artifacts"

status=0
for target in $targets; do
	mkdir -p "$work/corpus-$target"
	cp "$root/tests/fuzz/corpus/$target/"* "$work/corpus-$target/"
	log="$work/$target.log"
	echo "== fuzz_$target for ${secs}s"
	if UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		"$builddir/tests/fuzz_$target" -max_total_time="$secs" -print_final_stats=1 \
		-artifact_prefix="$artifacts/$target-" "$work/corpus-$target" >"$log" 2>&1; then
		runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
		echo "fuzz_$target: ${runs:-?} runs, corpus $(ls "$work/corpus-$target" | wc -l) inputs"
	else
		status=1
		echo "fuzz_$target: FAILED (crash input in $artifacts/)"
		tail -n 60 "$log"
	fi
done
exit $status
