#!/usr/bin/env bash
# Try pgfunnel in one command: install the dependencies, build, start a
# throwaway PostgreSQL 15 cluster and pgfunnel in front of it, print how to
# connect, and wait. Ctrl-C (or SIGTERM) stops both and removes every file.
#
# Usage (as root on Debian 12): ./scripts/try.sh [BUILD_DIR]   (default: build)
# Environment: PGFUNNEL_PORT (default 6432), PG_PORT (default 55432); the
# next free port is taken when one is busy.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
builddir=${1:-build}
pgbin=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
run_user=pgfunnel

say() { printf 'try.sh: %s\n' "$*" >&2; }

if [ "$(id -u)" -eq 0 ]; then
	./scripts/install-deps.sh
	as_user=(setpriv --reuid="$run_user" --regid="$run_user" --init-groups --)
	drop=(-u "$run_user")
else
	say "not root: skipping scripts/install-deps.sh, running everything as $(id -un)"
	as_user=()
	drop=()
fi

if [ ! -f "$builddir/build.ninja" ]; then
	meson setup "$builddir"
fi
ninja -C "$builddir"
pgfunnel_bin=$root/$builddir/pgfunnel

# A port nobody listens on, starting at $1.
free_port() {
	local p=$1
	while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
		p=$((p + 1))
	done
	echo "$p"
}

tmp=$(mktemp -d /tmp/pgfunnel-try.XXXXXX)
if [ ${#as_user[@]} -gt 0 ]; then
	chown "$run_user:$run_user" "$tmp"
fi
pf_pid=
tail_pid=
cleanup() {
	trap - EXIT INT TERM
	set +e
	say "stopping"
	if [ -n "$tail_pid" ]; then kill "$tail_pid" 2>/dev/null; fi
	if [ -n "$pf_pid" ] && kill -0 "$pf_pid" 2>/dev/null; then
		kill -INT "$pf_pid"
		for _ in $(seq 100); do kill -0 "$pf_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pf_pid" 2>/dev/null
		wait "$pf_pid" 2>/dev/null
	fi
	if [ -f "$tmp/data/postmaster.pid" ]; then
		pg_pid=$(head -n 1 "$tmp/data/postmaster.pid")
		(cd "$tmp" && "${as_user[@]}" "$pgbin/pg_ctl" -D "$tmp/data" -m fast -w stop >/dev/null) ||
			kill -QUIT "$pg_pid" 2>/dev/null
	fi
	rm -rf "$tmp"
	say "stopped; removed $tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
pg_port=$(free_port "${PG_PORT:-55432}")
pf_port=$(free_port "${PGFUNNEL_PORT:-6432}")
if [ "$pf_port" = "$pg_port" ]; then pf_port=$(free_port $((pf_port + 1))); fi

# The cluster: owned by $run_user, superuser postgres with a SCRAM password,
# TCP on 127.0.0.1 only, its unix socket in $tmp.
printf '%s\n' "$password" >"$tmp/pwfile"
if [ ${#as_user[@]} -gt 0 ]; then chown "$run_user:$run_user" "$tmp/pwfile"; fi
cd "$tmp"
"${as_user[@]}" "$pgbin/initdb" -D "$tmp/data" -U postgres --auth=scram-sha-256 \
	--pwfile="$tmp/pwfile" --locale=C --encoding=UTF8 --no-sync >"$tmp/initdb.log" ||
	{ cat "$tmp/initdb.log" >&2; exit 1; }
rm -f "$tmp/pwfile"
cat >>"$tmp/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$tmp'
password_encryption = 'scram-sha-256'
fsync = off
CONF
"${as_user[@]}" "$pgbin/pg_ctl" -D "$tmp/data" -l "$tmp/postgres.log" -w start >/dev/null ||
	{ cat "$tmp/postgres.log" >&2; exit 1; }
cd "$root"

# pgfunnel in front of it: same user and password (SCRAM), transaction pooling.
printf '"postgres" "%s"\n' "$password" >"$tmp/userlist.txt"
cat >"$tmp/pgfunnel.ini" <<INI
[databases]
* = host=127.0.0.1 port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pf_port
unix_socket_dir = $tmp
logfile = $tmp/pgfunnel.log
auth_type = scram-sha-256
auth_file = $tmp/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = 10
INI
chmod 600 "$tmp/userlist.txt" "$tmp/pgfunnel.ini"
if [ ${#as_user[@]} -gt 0 ]; then chown "$run_user:$run_user" "$tmp/userlist.txt" "$tmp/pgfunnel.ini"; fi

# -q: the log goes to $tmp/pgfunnel.log; it is shown below with tail.
"$pgfunnel_bin" -q "${drop[@]}" "$tmp/pgfunnel.ini" &
pf_pid=$!
for _ in $(seq 100); do
	if ! kill -0 "$pf_pid" 2>/dev/null; then
		wait "$pf_pid" && rc=0 || rc=$?
		say "pgfunnel exited with status $rc before it was ready:"
		cat "$tmp/pgfunnel.log" >&2 2>/dev/null
		exit 1
	fi
	if grep -q 'process up: ' "$tmp/pgfunnel.log" 2>/dev/null; then break; fi
	sleep 0.1
done
if ! grep -q 'process up: ' "$tmp/pgfunnel.log" 2>/dev/null; then
	say "pgfunnel did not log 'process up' within 10 s:"
	cat "$tmp/pgfunnel.log" >&2 2>/dev/null
	exit 1
fi

cat <<MSG

  $("$pgfunnel_bin" -V | head -n 1) is listening on 127.0.0.1:$pf_port, in front of
  PostgreSQL 15 on 127.0.0.1:$pg_port (data and logs in $tmp).

  Connect through pgfunnel (password: $password):
      PGPASSWORD=$password psql -h 127.0.0.1 -p $pf_port -U postgres postgres

  Admin console (SHOW HELP lists the commands):
      PGPASSWORD=$password psql -h 127.0.0.1 -p $pf_port -U postgres pgfunnel

  Postgres directly:
      PGPASSWORD=$password psql -h 127.0.0.1 -p $pg_port -U postgres postgres

  pgfunnel's PID is $pf_pid; its log follows. Ctrl-C stops everything.

MSG

tail -n +1 -F "$tmp/pgfunnel.log" 2>/dev/null &
tail_pid=$!
set +e
wait "$pf_pid"
rc=$?
set -e
if [ "$rc" -lt 128 ]; then
	say "pgfunnel exited with status $rc"
	pf_pid=
	exit "$rc"
fi
