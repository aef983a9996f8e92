#!/usr/bin/env bash
# Installs and starts a local PostgreSQL with a throwaway test database (loopback only).
set -euo pipefail
if ! command -v pg_lsclusters >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi
version=$(pg_lsclusters --no-header | awk 'NR==1 {print $1}')
if [ -z "$version" ]; then
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_createcluster "$version" main >/dev/null
fi
pg_ctlcluster "$version" main start 2>/dev/null || true
for _ in $(seq 1 30); do
  su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
  sleep 1
done
su postgres -c "psql -qAtc \"SELECT 1 FROM pg_roles WHERE rolname='shoesvz'\"" | grep -q 1 ||
  su postgres -c "psql -q -v ON_ERROR_STOP=1 -c \"CREATE ROLE shoesvz LOGIN PASSWORD 'shoesvz'\""
su postgres -c "psql -qAtc \"SELECT 1 FROM pg_database WHERE datname='shoesvz_test'\"" | grep -q 1 ||
  su postgres -c "createdb -O shoesvz shoesvz_test"
echo "postgresql $version ready on 127.0.0.1:5432 (database shoesvz_test)"
