#!/usr/bin/env bash
# Start a PostgreSQL server on 127.0.0.1:5432 (Debian's package, installed if
# missing) with a role and database for the multi-worker study test, and
# print the URL the tests read from RESEARCH_TEST_POSTGRES_URL.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
  pg_createcluster "$version" main >&2
fi
pg_ctlcluster "$version" main start >&2 2>/dev/null || true
for _ in $(seq 30); do
  pg_isready -h 127.0.0.1 -p 5432 -q && break
  sleep 1
done
pg_isready -h 127.0.0.1 -p 5432 -q
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_roles WHERE rolname='research'\"" | grep -q 1 ||
  su postgres -c "psql -q -c \"CREATE ROLE research LOGIN PASSWORD 'research'\"" >&2
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname='research_test'\"" | grep -q 1 ||
  su postgres -c "createdb -O research research_test" >&2
echo "postgresql://research:research@127.0.0.1:5432/research_test"
