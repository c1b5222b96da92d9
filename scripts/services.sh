#!/usr/bin/env bash
# Start the services the tests (and the bench) need, and hand back how to reach them.
#
#   eval "$(scripts/services.sh)"              # PostgreSQL
#   eval "$(scripts/services.sh --with-docker)" # PostgreSQL and a Docker engine
#
# stdout carries only `export NAME=value` lines; progress and warnings go to stderr.
# The same lines are written to .fivesafes/services.env (git-ignored, mode 600), which
# other scripts may `source` instead.
#
# Idempotent: a service already running is reused; re-running keeps the same password.
# Under CI=true a service that cannot be started fails the script (non-zero exit);
# locally it is a warning, and the tests that need it skip.
#
# Each service is one function start_<name> that prints its export lines on stdout and
# returns non-zero on failure; add a new one to SERVICES below.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The services are the machine's, not this checkout's: keep their env (and the test role's password)
# in one place per machine, so two checkouts on one machine never reset each other's password.
ENV_DIR="${XDG_STATE_HOME:-$HOME/.local/state}/fivesafes-tes"
ENV_FILE="$ENV_DIR/services.env"
CHECKOUT_COPY="$ROOT/.fivesafes/services.env"
IN_CI=0
[ "${CI:-}" = "true" ] && IN_CI=1

SERVICES=(postgres)
for arg in "$@"; do
  case "$arg" in
    --with-docker) SERVICES+=(docker) ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "services: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { echo "services: $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# Keep apt's chatter out of the way but show it when it fails.
quiet() {
  local out
  out="$(mktemp)"
  if "$@" >"$out" 2>&1; then
    rm -f "$out"
  else
    local rc=$?
    echo "services: command failed (exit $rc): $*" >&2
    cat "$out" >&2
    rm -f "$out"
    return "$rc"
  fi
}

# apt-get update costs ~10 s and needs doing only once per run, and only if we install.
APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    APT_UPDATED=1
  fi
  log "apt-get install -y $*"
  quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# wait_for SECONDS CMD...: poll CMD once a second until it succeeds or time runs out.
wait_for() {
  local seconds="$1"
  shift
  local i
  for ((i = 0; i < seconds; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  "$@" >/dev/null 2>&1
}

# Value of NAME in the env file from a previous run, if any (to keep passwords stable, so
# a shell that eval'd an earlier run's output keeps working).
previous_value() {
  [ -f "$ENV_FILE" ] || return 0
  sed -n "s/^export $1=//p" "$ENV_FILE" | tail -n1
}

# --- PostgreSQL ---------------------------------------------------------------------------
PG_ROLE=fivesafes_test

pg_server_version() {
  # Highest major version whose server binary Debian has installed.
  local v
  v="$(ls -1 /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sed 's#^/usr/lib/postgresql/\([0-9.]*\)/.*#\1#' |
    sort -n | tail -n1)"
  [ -n "$v" ] && echo "$v"
}

start_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! pg_server_version >/dev/null; then
    apt_install postgresql
  fi
  local ver
  ver="$(pg_server_version)" || { log "no PostgreSQL server binary after install"; return 1; }

  # The Debian package creates the cluster `main` on install, but a machine whose data
  # directory was wiped (or a pre-installed image) may have none.
  if ! pg_lsclusters -h 2>/dev/null | awk -v v="$ver" '$1 == v && $2 == "main" { f = 1 } END { exit !f }'; then
    log "creating PostgreSQL $ver cluster 'main'"
    quiet as_root pg_createcluster "$ver" main
  fi

  # /run is a tmpfs: after a reboot, or in a container without systemd's tmpfiles, the
  # socket directory is gone and the server refuses to start.
  as_root install -d -o postgres -g postgres -m 2775 /var/run/postgresql

  local status port
  read -r status port < <(pg_lsclusters -h | awk -v v="$ver" '$1 == v && $2 == "main" { print $4, $3 }')
  if [ "$status" != "online" ]; then
    log "starting PostgreSQL $ver/main on port $port"
    quiet as_root pg_ctlcluster "$ver" main start
  fi
  wait_for 30 pg_isready -q -h 127.0.0.1 -p "$port" || {
    log "PostgreSQL did not become ready on 127.0.0.1:$port (see /var/log/postgresql/postgresql-$ver-main.log)"
    return 1
  }

  # Tests log in over TCP with a password (pg_hba's default for 127.0.0.1 is
  # scram-sha-256). The password is made here, never committed; reuse the last one so
  # that re-running does not break a shell that still holds the old URL.
  local pw
  pw="$(previous_value FIVESAFES_TEST_PG_PASSWORD)"
  [[ "$pw" =~ ^[0-9a-f]{32}$ ]] || pw="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"

  # SUPERUSER: the fixtures CREATE DATABASE and DROP DATABASE ... WITH (FORCE), which
  # needs to terminate other sessions. Peer auth over the unix socket as `postgres`.
  as_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d postgres -v pw="$pw" >/dev/null <<SQL
SELECT 'CREATE ROLE $PG_ROLE' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE')\gexec
ALTER ROLE $PG_ROLE WITH LOGIN SUPERUSER PASSWORD :'pw';
SQL

  local url="postgresql+psycopg://$PG_ROLE:$pw@127.0.0.1:$port/postgres"
  PGPASSWORD="$pw" psql -X -q -h 127.0.0.1 -p "$port" -U "$PG_ROLE" -d postgres -c 'SELECT 1' >/dev/null || {
    log "could not log in as $PG_ROLE over TCP on 127.0.0.1:$port"
    return 1
  }
  log "PostgreSQL $ver ready on 127.0.0.1:$port as $PG_ROLE"
  echo "export FIVESAFES_TEST_PG_URL=$url"
  echo "export FIVESAFES_TEST_PG_PASSWORD=$pw"
}

# --- Docker (only with --with-docker) -----------------------------------------------------
# For the executor tests. This kind of machine has the docker client but no running
# engine, so we install Debian's docker.io and run dockerd ourselves, detached, so it
# outlives this script (and make) for the rest of the run. The executor also needs a
# static busybox on the host (bind-mounted into every container as its deadline wrapper), and
# the workflow tests build their runner image from a Debian root file system made by debootstrap.
DOCKER_SOCK=/var/run/docker.sock
DOCKER_LOG="$ENV_DIR/dockerd.log"

docker_ready() { docker -H "unix://$DOCKER_SOCK" info >/dev/null 2>&1; }

start_docker() {
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  [ -x /bin/busybox ] || apt_install busybox-static
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  if ! docker_ready; then
    mkdir -p "$ENV_DIR"
    # A dockerd that died uncleanly leaves its pid file; a live one we cannot reach is
    # someone else's and must not be fought over.
    local pid
    pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      log "dockerd (pid $pid) is running but not answering yet; waiting for it"
    else
      as_root rm -f /var/run/docker.pid
      log "starting dockerd (log: $DOCKER_LOG)"
      as_root setsid dockerd >>"$DOCKER_LOG" 2>&1 </dev/null &
    fi
    wait_for 60 docker_ready || {
      log "dockerd did not answer on $DOCKER_SOCK within 60 s; last log lines:"
      tail -n 20 "$DOCKER_LOG" >&2 || true
      return 1
    }
  fi
  log "Docker engine ready on $DOCKER_SOCK"
  echo "export DOCKER_HOST=unix://$DOCKER_SOCK"
}

# --- main ---------------------------------------------------------------------------------
exports=""
failed=()
for svc in "${SERVICES[@]}"; do
  # Run each service in a subshell with errexit on: any failing step inside it ends that
  # service (not the whole script), and its stdout is its export lines.
  set +e
  out="$(
    set -e
    "start_$svc"
  )"
  rc=$?
  set -e
  if [ "$rc" -eq 0 ]; then
    exports+="$out"$'\n'
  else
    failed+=("$svc")
  fi
done

mkdir -p "$ENV_DIR"
tmp="$(mktemp "$ENV_DIR/.services.env.XXXXXX")"
chmod 600 "$tmp"
{
  echo "# Written by scripts/services.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ); source it or eval the script."
  printf '%s' "$exports"
} >"$tmp"
mv -f "$tmp" "$ENV_FILE"
mkdir -p "$(dirname "$CHECKOUT_COPY")"
install -m 600 "$ENV_FILE" "$CHECKOUT_COPY"  # for `. .fivesafes/services.env` in a shell here
printf '%s' "$exports"

if [ "${#failed[@]}" -gt 0 ]; then
  if [ "$IN_CI" -eq 1 ]; then
    log "ERROR: could not start: ${failed[*]} (CI=true: a missing service is a failure)"
    exit 1
  fi
  log "WARNING: could not start: ${failed[*]}; continuing without (tests that need it will skip)"
fi
