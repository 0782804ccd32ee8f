#!/usr/bin/env bash
# Start a real PostgreSQL with pgvector on loopback for the avatar store tests; print its DSN.
#
# Usage: scripts/start-postgres.sh [--stop]
#   export PERSONALM_PG_DSN="$(scripts/start-postgres.sh)"
#
# Which server: Debian's PostgreSQL when its extension folder has pgvector (apt-get installs
# postgresql-15-pgvector where an archive offers it). Debian bookworm's main archive has no
# pgvector, so otherwise the PostgreSQL + pgvector build shipped inside the PyPI wheel `pgserver`
# is used (installed into $PYTHON's environment when missing). Idempotent: a running server is
# reused. The server runs as an unprivileged user (PostgreSQL refuses root) with trust auth on
# 127.0.0.1 only. Log lines go to stderr; stdout is only the DSN.
set -euo pipefail

PORT="${PERSONALM_PG_PORT:-54329}"
DATA="${PERSONALM_PG_DATA:-${TMPDIR:-/tmp}/personalm-pg}"
DB=personalm
PYTHON="${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
log() { echo "start-postgres: $*" >&2; }

debian_bindir() {
  local bin
  for bin in /usr/lib/postgresql/*/bin; do
    [ -x "$bin/pg_ctl" ] || continue
    local share
    share="$("$bin/pg_config" --sharedir 2>/dev/null || echo "/usr/share/postgresql/$(basename "$(dirname "$bin")")")"
    if [ -f "$share/extension/vector.control" ]; then echo "$bin"; return 0; fi
  done
  return 1
}

pgserver_bindir() {
  "$PYTHON" -c 'import os, pgserver; print(os.path.join(os.path.dirname(pgserver.__file__), "pginstall", "bin"))' 2>/dev/null
}

find_bindir() {
  local bin
  if bin="$(debian_bindir)"; then echo "$bin"; return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "trying apt-get install postgresql postgresql-15-pgvector"
    if apt-get install -y -qq postgresql postgresql-15-pgvector >&2 2>/dev/null && bin="$(debian_bindir)"; then
      echo "$bin"; return 0
    fi
    log "no pgvector package in the configured Debian archives; using the pgserver wheel"
  fi
  if ! bin="$(pgserver_bindir)"; then
    log "installing pgserver into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    "$PYTHON" -m pip install -q pgserver==0.1.4 >&2
    bin="$(pgserver_bindir)"
  fi
  echo "$bin"
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$OWNER" -- "$@"; else "$@"; fi
}

if [ "$(id -u)" = 0 ]; then
  OWNER=postgres
  id "$OWNER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$OWNER"
else
  OWNER="$(id -un)"
fi

BIN="$(find_bindir)"
# The server runs as $OWNER, who may not reach a checkout under root's home: use a readable copy.
if ! as_owner test -x "$BIN/postgres"; then
  COPY="${PERSONALM_PG_BINCOPY:-/opt/personalm-pg}"
  # Three levels up from bin/ is the install root (pgserver's binaries find their libraries there).
  ROOT="$(cd "$BIN/../../.." && pwd)"
  REL="${BIN#"$ROOT"/}"
  log "copying the server under $ROOT to $COPY (not readable by $OWNER where it is)"
  rm -rf "$COPY" && mkdir -p "$COPY"
  for part in "${REL%%/*}" "${REL%%/*}.libs"; do
    [ -e "$ROOT/$part" ] && cp -a "$ROOT/$part" "$COPY/"
  done
  chmod -R a+rX "$COPY"
  BIN="$COPY/$REL"
fi
if [ "${1:-}" = "--stop" ]; then
  as_owner "$BIN/pg_ctl" -D "$DATA" -m fast stop >&2 || true
  exit 0
fi

if ! as_owner "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
  mkdir -p "$DATA"
  chown "$OWNER" "$DATA"
  chmod 700 "$DATA"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    log "initdb in $DATA with $BIN"
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
  fi
  log "starting PostgreSQL on 127.0.0.1:$PORT"
  as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $PORT -k $DATA -c fsync=on -c max_connections=50" start >&2
fi

as_owner "$BIN/psql" -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
  || as_owner "$BIN/psql" -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE $DB" >&2
PGOPTIONS="--client-min-messages=warning" as_owner "$BIN/psql" -q -h 127.0.0.1 -p "$PORT" -U postgres -d "$DB" \
  -c "CREATE EXTENSION IF NOT EXISTS vector" >&2
echo "postgresql://postgres@127.0.0.1:$PORT/$DB"
