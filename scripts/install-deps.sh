#!/usr/bin/env bash
# Install everything pgfunnel needs to build and to run its whole test suite on
# Debian 12, and create the unprivileged `pgfunnel` system user that runs the
# test servers (initdb refuses root), and run npm ci for the node-postgres test
# (tests/integration/drivers/node). Idempotent: apt is skipped when every
# package is already installed, npm ci when node_modules matches package-lock.json.
# Must be run as root.
#
# Packages are installed with services held back (policy-rc.d), so installing
# postgresql-15 or pgbouncer does not start a server on 5432/6432; services
# that were already running are left alone.
set -euo pipefail

PACKAGES=(
	# build
	meson ninja-build pkg-config gcc clang build-essential
	libuv1-dev libssl-dev libcmocka-dev libsystemd-dev
	# fuzzing with clang (libFuzzer and sanitizer runtimes)
	libclang-rt-14-dev
	# tests: man page lint, integration suite, leak checks, side-by-side runs
	groff-base python3 python3-pytest python3-pytest-timeout python3-psycopg
	postgresql-15 postgresql-client-15 valgrind pgbouncer
	# tests: certificates for the TLS tests (tests/integration/tlscerts.py)
	openssl
	# tests: real drivers with prepared statements (test_prepared_drivers.py), psycopg_pool
	# for the rolling-restart test; npm is added
	# below only when no npm is on PATH (a node from elsewhere may bring its own)
	python3-asyncpg python3-psycopg-pool libpostgresql-jdbc-java default-jdk-headless nodejs
	# users, setpriv/runuser; ss for the socket-buffer tests (normally present already)
	passwd util-linux iproute2
)

if ! command -v npm >/dev/null; then
	PACKAGES+=(npm)
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps.sh: must be run as root (it installs packages and creates the pgfunnel user)" >&2
	exit 1
fi
if [ ! -r /etc/debian_version ] || ! command -v apt-get >/dev/null; then
	echo "install-deps.sh: this script supports Debian 12 (apt-get); install the packages listed in it by hand" >&2
	exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
	[ "$status" = installed ] || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
	echo "install-deps.sh: installing ${missing[*]}"
	created_policy=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		# invoke-rc.d asks this script whether to start services: 101 = no.
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		created_policy=1
	fi
	cleanup() { if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; }
	trap cleanup EXIT
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	apt-get install -y --no-install-recommends "${missing[@]}"
	cleanup
	trap - EXIT
else
	echo "install-deps.sh: all ${#PACKAGES[@]} packages already installed"
fi

if ! id -u pgfunnel >/dev/null 2>&1; then
	useradd --system --user-group --no-create-home --shell /usr/sbin/nologin pgfunnel
	echo "install-deps.sh: created system user pgfunnel"
fi

# node-postgres for test_prepared_drivers.py, at the version pinned in package-lock.json;
# skipped when node_modules was installed from this very lock file (its sha256 in a stamp).
node_dir=$(cd "$(dirname "$0")/.." && pwd)/tests/integration/drivers/node
if [ -f "$node_dir/package-lock.json" ]; then
	stamp=$node_dir/node_modules/.pgfunnel-lock.sha256
	want=$(sha256sum "$node_dir/package-lock.json" | cut -d' ' -f1)
	if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
		echo "install-deps.sh: node-postgres already installed (tests/integration/drivers/node)"
	else
		echo "install-deps.sh: npm ci in tests/integration/drivers/node"
		(cd "$node_dir" && npm ci --no-audit --no-fund)
		echo "$want" >"$stamp"
	fi
fi
