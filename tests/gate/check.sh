#!/bin/sh
# Proves that the sanitizer gate of the integration suite fires: runs
# tests/integration/test_sanitizer_gate.py against BINARY, a pgfunnel built with
# -Db_sanitize=address,undefined -Dplanted_bug=true (see tests/gate/planted_bug.c), once per
# planted bug, and passes only if
#   - without a planted bug the tests pass (so what fails below is the bug), and
#   - with each bug (leak, overflow, undefined) pytest FAILS and its output carries the
#     sanitizer's own report for that bug, as the fixture teardown prints it;
#   - with a pgfunnel that never finishes exiting (hang) it FAILS because the teardown had to
#     SIGKILL it (no leak check ran); stop timeouts are shortened for that.
#
#   tests/gate/check.sh BINARY
set -u

bin=${1:?usage: tests/gate/check.sh BINARY}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mktemp)
trap 'rm -f "$out"' EXIT INT TERM
status=0

# run BUG [TEST]: pytest (of test_sanitizer_gate.py, or only its test TEST) against the binary
# with PF_PLANTED_BUG=BUG and short stop timeouts; output in $out, returns pytest's status.
run() {
	PF_PLANTED_BUG=$1 PGFUNNEL_STOP_GRACE=1 PGFUNNEL_STOP_TIMEOUT=2 \
		PGFUNNEL_BIN=$bin PGFUNNEL_SOURCE_ROOT=$root PGFUNNEL_SANITIZED=1 \
		/usr/bin/python3 -m pytest -q -p no:cacheprovider -rfEs \
		"$root/tests/integration/test_sanitizer_gate.py${2:+::$2}" >"$out" 2>&1
}

if run ""; then
	echo "gate: no planted bug: passes, as it should"
else
	echo "gate: FAILED: without a planted bug the gate tests fail:"
	cat "$out"
	status=1
fi

# Each bug with the report text the failure must show (a grep -E pattern). A hang is tried on
# the fixture's instance only (a hanging "pgfunnel --version" would just time out).
for spec in "leak:ERROR: LeakSanitizer: detected memory leaks" \
	"overflow:ERROR: AddressSanitizer: heap-buffer-overflow" \
	"undefined:runtime error: signed integer overflow" \
	"hang:SIGKILLed, so no exit-time leak check ran"; do
	bug=${spec%%:*}
	want=${spec#*:}
	test=
	[ "$bug" = hang ] && test=test_instance_left_running_for_teardown
	if run "$bug" "$test"; then
		echo "gate: FAILED: planted bug '$bug' went unnoticed: the tests passed"
		cat "$out"
		status=1
	elif ! grep -q "^sanitizer gate:" "$out" || ! grep -qE "$want" "$out"; then
		echo "gate: FAILED: planted bug '$bug' failed the tests, but not with the gate's report ($want):"
		cat "$out"
		status=1
	else
		echo "gate: planted bug '$bug' fails the run, as it should: $(grep -m1 -E "$want" "$out")"
		grep -E "^(ERROR|FAILED) " "$out" | sed 's/^/      /'
	fi
done
exit $status
