#!/usr/bin/env bash
# Run the whole test suite: install dependencies (when root), build with
# warnings as errors, then
#   1. the unit suite (cmocka + man page lint),
#   2. the unit suite again under AddressSanitizer + UndefinedBehaviorSanitizer,
#   3. the fuzz targets for a short while (tests/fuzz/run.sh, when present),
#   4. the integration suite against the sanitizer build (reports fail the tests),
#   5. the sanitizer gate check: a sanitizer build with planted bugs (-Dplanted_bug=true) must
#      FAIL tests/integration/test_sanitizer_gate.py with each bug's report (tests/gate/),
#   6. the integration suite (pytest against a real PostgreSQL 15) LAST,
# so the output ends with meson test's summary. Every step runs even when an
# earlier one failed; the exit status is non-zero if any failed.
#
# Usage (as root on Debian 12): ./scripts/test.sh [BUILD_DIR]   (default: build-ci)
# FUZZ_SECONDS sets the fuzzing time per target (default: tests/fuzz/run.sh's).
# As root (dependencies installed) an unexpected pytest skip fails the suite (PGFUNNEL_NO_SKIP=1,
# allowed skips in tests/integration/conftest.py); pytest lists every skip (-rfEs).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
builddir=${1:-build-ci}
sandir=$builddir-san
failed=()

step() { printf '\n==== test.sh: %s\n' "$*"; }

if [ "$(id -u)" -eq 0 ]; then
	./scripts/install-deps.sh || exit 1
	export PGFUNNEL_NO_SKIP=${PGFUNNEL_NO_SKIP:-1}
else
	echo "test.sh: not root: skipping scripts/install-deps.sh (the integration suite needs the pgfunnel user or a non-root run)"
fi

# configure DIR ARGS...: set up DIR, or apply ARGS to an existing one.
configure() {
	local dir=$1
	shift
	if [ -f "$dir/build.ninja" ]; then
		meson configure "$dir" "$@"
	else
		meson setup "$dir" "$@"
	fi
}

step "build ($builddir, -Dwerror=true)"
if ! configure "$builddir" -Dwerror=true || ! ninja -C "$builddir"; then
	echo "test.sh: the build failed; nothing to test"
	exit 1
fi

step "layers: no module uses a module above it (ARCHITECTURE.md)"
if [ -x ../shared/tools/module-cycles ]; then
	../shared/tools/module-cycles . || failed+=(layers)
else
	echo "test.sh: ../shared/tools/module-cycles not found: layer check not run"
fi

step "unit suite"
meson test -C "$builddir" --suite unit --print-errorlogs || failed+=(unit)

step "unit suite under ASan+UBSan ($sandir)"
if configure "$sandir" -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false \
	-Dintegration=disabled && ninja -C "$sandir"; then
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		meson test -C "$sandir" --suite unit --print-errorlogs || failed+=(unit-sanitizers)
else
	failed+=(sanitizer-build)
fi

if [ -x tests/fuzz/run.sh ]; then
	step "fuzzing (${FUZZ_SECONDS:-default} s per target)"
	tests/fuzz/run.sh ${FUZZ_SECONDS:+"$FUZZ_SECONDS"} || failed+=(fuzz)
fi

if [ -x "$sandir/pgfunnel" ]; then
	# The integration suite against the ASan+UBSan binary: every sanitizer or LeakSanitizer
	# report a pgfunnel writes fails the test that ran it, and so does an instance that has to
	# be SIGKILLed at teardown (its leak check never ran). conftest.py adds log_path (a report
	# file per process) and quarantine_size_mb=16 to these options.
	step "integration suite under ASan+UBSan ($sandir/pgfunnel)"
	PGFUNNEL_BIN="$PWD/$sandir/pgfunnel" PGFUNNEL_SOURCE_ROOT="$PWD" PGFUNNEL_SANITIZED=1 \
		ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0 \
		UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		/usr/bin/python3 -m pytest -q -p no:cacheprovider -rfEs tests/integration ||
		failed+=(integration-sanitizers)
fi

# A gate that cannot fire proves nothing: a build with planted bugs must fail the gate tests.
gatedir=$builddir-gate
step "sanitizer gate check ($gatedir, -Dplanted_bug=true: these runs MUST fail)"
if configure "$gatedir" -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false \
	-Dplanted_bug=true -Dintegration=disabled && ninja -C "$gatedir" pgfunnel; then
	tests/gate/check.sh "$PWD/$gatedir/pgfunnel" || failed+=(sanitizer-gate)
else
	failed+=(sanitizer-gate-build)
fi

if [ "${#failed[@]}" -gt 0 ]; then
	echo "test.sh: FAILED so far: ${failed[*]} (running the integration suite anyway)"
fi

step "integration suite"
meson test -C "$builddir" --suite integration --print-errorlogs || failed+=(integration)

[ "${#failed[@]}" -eq 0 ]
