#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for the tests, and its teardown. Nothing else.
#
#   eval "$(.ci/postgres.sh start)"   # installs PostgreSQL 15 if initdb is missing, starts a
#                                     # cluster in a temp dir on a free loopback port, creates
#                                     # the database, and prints the exports below
#   .ci/postgres.sh stop              # stops that cluster and removes its directory
#
# `start` prints only `export` lines on stdout (everything else goes to stderr):
#   JOBCORE_TEST_PG_DSN  postgresql://postgres@127.0.0.1:PORT/jobcore_test (trust auth, loopback only)
#   JOBCORE_TEST_PG_DIR  the temp dir holding the data dir, socket and log (`stop` needs it)
# As root (as in CI) the server runs as the `postgres` user: initdb refuses to run as root.
# The cluster trades durability for speed (fsync off): it is for tests, never for data.
set -euo pipefail

PG_VERSION=15

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
  local dir
  for dir in "/usr/lib/postgresql/$PG_VERSION/bin" /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return 0; fi
  done
  if command -v pg_config >/dev/null 2>&1; then
    dir=$(pg_config --bindir)
    if [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
  fi
  if command -v initdb >/dev/null 2>&1; then dirname "$(readlink -f "$(command -v initdb)")"; return 0; fi
  return 1
}

install_postgres() {
  if ! command -v apt-get >/dev/null 2>&1; then
    log "no initdb and no apt-get: cannot install PostgreSQL $PG_VERSION"; return 1
  fi
  log "installing PostgreSQL $PG_VERSION with apt-get"
  # No default cluster: ours lives in a temp dir and nothing should hold port 5432.
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/jobcore-ci.conf
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$PG_VERSION" >&2
}

# Run a server binary as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  local bindir dir port
  bindir=$(find_bindir) || { install_postgres; bindir=$(find_bindir); } || {
    log "PostgreSQL binaries not found after installing"; return 1; }
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  fi
  dir=$(mktemp -d "${TMPDIR:-/tmp}/jobcore-pg.XXXXXX")
  chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  port=$(free_port)
  log "starting $("$bindir/postgres" --version) in $dir on 127.0.0.1:$port"
  as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2; return 1; }
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >&2 || { cat "$dir/server.log" >&2; return 1; }
  as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres jobcore_test >&2
  echo "export JOBCORE_TEST_PG_DSN='postgresql://postgres@127.0.0.1:$port/jobcore_test'"
  echo "export JOBCORE_TEST_PG_DIR='$dir'"
}

stop() {
  local dir=${1:-${JOBCORE_TEST_PG_DIR:-}} bindir
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then log "no cluster to stop"; return 0; fi
  if bindir=$(find_bindir) && [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >&2 || true
  fi
  rm -rf "$dir"
  log "stopped and removed $dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 start | stop [DIR]" >&2; exit 2 ;;
esac
