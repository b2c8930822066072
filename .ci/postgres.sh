#!/usr/bin/env bash
# Start a private PostgreSQL server on 127.0.0.1 (Debian's package, installed
# if missing) with a role and database for the multi-worker study tests, and
# print the URL the tests read from RESEARCH_TEST_POSTGRES_URL.
#
# Why a fresh data directory and not Debian's "main" cluster: a machine image
# taken while that cluster ran keeps its postmaster.pid; when the recorded pid
# belongs to another process on the next boot, pg_ctlcluster says "Cluster is
# already running" and nothing listens (this failed CI once). A new cluster in
# a temporary folder, on a port found free, has no state to go stale. max_connections
# 300: the fault tests start many worker processes, each with its own connections.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
bin=/usr/lib/postgresql/$version/bin
root=$(mktemp -d /tmp/research-postgres.XXXXXX)
chown postgres "$root"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_postgres() { su postgres -s /bin/bash -c "$*"; }
as_postgres "$bin/initdb -D $root/data -U postgres --auth=trust -E UTF8 >$root/initdb.log 2>&1" || {
  cat "$root/initdb.log" >&2
  exit 1
}
if ! as_postgres "$bin/pg_ctl -D $root/data -l $root/server.log -w -t 60 \
    -o '-p $port -k $root -c listen_addresses=127.0.0.1 -c max_connections=300' start" >&2; then
  echo "postgres.sh: the server did not start; its log, $root/server.log:" >&2
  cat "$root/server.log" >&2
  exit 1
fi
psql_admin() { psql -q -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }
psql_admin -c "CREATE ROLE research LOGIN PASSWORD 'research'" >&2
psql_admin -c "CREATE DATABASE research_test OWNER research" >&2
echo "postgresql://research:research@127.0.0.1:$port/research_test"
