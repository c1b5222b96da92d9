#!/usr/bin/env bash
# Create (or refresh) the project's virtual environments.
#
#   scripts/bootstrap.sh                  .venv with the project installed editable, plus test extras
#   scripts/bootstrap.sh --with-pytes04   also .venv-pytes04 with the old py-tes 0.4.x client
#   scripts/bootstrap.sh --with-browser   also Debian's chromium and axe-core (tests/browser), for the
#                                         page tests in a real browser
#
# Idempotent and cheap to re-run: each venv carries a stamp file holding the sha256 of what
# it was installed from, and nothing is reinstalled while that still matches.
# Output is quiet; a failing step prints its full log. PYTHON=... picks the interpreter.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WITH_PYTES04=0
WITH_BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --with-pytes04) WITH_PYTES04=1 ;;
    --with-browser) WITH_BROWSER=1 ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bootstrap: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { echo "bootstrap: $*" >&2; }
die() { echo "bootstrap: ERROR: $*" >&2; exit 1; }

# Run a command with its output kept in a log; show the log only if it fails, so a
# normal run stays quiet but a broken install is never silent.
quiet() {
  local out
  out="$(mktemp)"
  if "$@" >"$out" 2>&1; then
    rm -f "$out"
  else
    local rc=$?
    echo "bootstrap: command failed (exit $rc): $*" >&2
    cat "$out" >&2
    rm -f "$out"
    return "$rc"
  fi
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# Two bootstraps at once (e.g. `make demo` and `make test` in two terminals) would race
# on the same venv; serialise them.
LOCK="${TMPDIR:-/tmp}/fivesafes-bootstrap-$(echo "$ROOT" | sha256sum | cut -c1-12).lock"
exec 9>"$LOCK"
flock 9 2>/dev/null || true

# --- which interpreter -------------------------------------------------------------------
# pyproject says requires-python >= 3.11; prefer an explicit python3.11.
pick_python() {
  local candidate
  for candidate in ${PYTHON:-} python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}
PY="$(pick_python)" || die "no Python >= 3.11 found (tried \$PYTHON, python3.11, python3)"

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  if [ "$APT_UPDATED" -eq 0 ]; then
    quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get update || return 1
    APT_UPDATED=1
  fi
  quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

# make_venv DIR: create DIR as a venv unless a working one is already there.
make_venv() {
  local dir="$1"
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c 'import sys' >/dev/null 2>&1; then
    return 0
  fi
  # A venv whose interpreter vanished (e.g. the base Python was upgraded) is useless: rebuild.
  rm -rf "$dir"
  log "creating $dir with $PY"
  if ! "$PY" -m venv "$dir" >/dev/null 2>&1; then
    # Debian's system python3 ships without ensurepip until python3-venv is installed.
    rm -rf "$dir"
    log "venv creation failed; installing python3-venv"
    apt_install python3-venv || die "could not install python3-venv"
    quiet "$PY" -m venv "$dir" || die "could not create $dir"
  fi
}

# pip_install DIR ARGS...: upgrade pip, then install ARGS into the venv DIR. Upgrading
# pip first matters for editable installs of a pyproject-only project (PEP 660).
pip_install() {
  local dir="$1"
  shift
  quiet "$dir/bin/python" -m pip install --upgrade pip || die "could not upgrade pip in $dir"
  quiet "$dir/bin/python" -m pip install "$@"
}

# stamp_ok DIR HASH: true when DIR was last installed successfully from HASH.
STAMP_NAME=".fivesafes-installed"
stamp_ok() { [ -f "$1/$STAMP_NAME" ] && [ "$(cat "$1/$STAMP_NAME")" = "$2" ]; }

# --- main venv: the project itself, editable, with test extras ---------------------------
MAIN_HASH="$(sha256sum pyproject.toml | cut -d' ' -f1)"
make_venv .venv
if stamp_ok .venv "$MAIN_HASH"; then
  log ".venv is up to date"
else
  log "installing the project into .venv (pip install -e '.[test]')"
  rm -f ".venv/$STAMP_NAME" # a failed install must not leave an old stamp claiming success
  pip_install .venv -e '.[test]' || die "pip install -e '.[test]' failed"
  echo "$MAIN_HASH" >".venv/$STAMP_NAME"
  log ".venv ready"
fi

# --- optional venv: py-tes 0.4.x --------------------------------------------------------
# py-tes 0.4.x is the client that Snakemake's and Toil's TES plugins still pin. It cannot
# share .venv with py-tes 1.1 (same `tes` import name), so it lives in its own venv and
# the tests drive it in a subprocess against a live server.
# Its wheel declares attrs, future, python-dateutil and requests; its models.py also
# imports `six` without declaring it (it arrives via python-dateutil today), so we name
# six explicitly rather than rely on that.
if [ "$WITH_PYTES04" -eq 1 ]; then
  PYTES04_REQS=("py-tes==0.4.*" "requests" "six")
  PYTES04_HASH="$(printf '%s\n' "${PYTES04_REQS[@]}" | sha256sum | cut -d' ' -f1)"
  make_venv .venv-pytes04
  if stamp_ok .venv-pytes04 "$PYTES04_HASH"; then
    log ".venv-pytes04 is up to date"
  else
    log "installing py-tes 0.4.x into .venv-pytes04"
    rm -f ".venv-pytes04/$STAMP_NAME"
    pip_install .venv-pytes04 "${PYTES04_REQS[@]}" || die "py-tes 0.4 install failed"
    quiet .venv-pytes04/bin/python -c 'import tes, requests' || die "py-tes 0.4 does not import"
    echo "$PYTES04_HASH" >".venv-pytes04/$STAMP_NAME"
    log ".venv-pytes04 ready"
  fi
fi

# --- optional: a real browser for the page tests ------------------------------------------
# Debian's chromium, driven by Playwright (a test dependency) at /usr/bin/chromium: Playwright's own
# browser download cannot work here. axe-core comes from npm, pinned by tests/browser/package-lock.json.
if [ "$WITH_BROWSER" -eq 1 ]; then
  if [ ! -x /usr/bin/chromium ]; then
    log "installing Debian's chromium"
    apt_install chromium fonts-liberation || die "could not install chromium (apt-get install chromium)"
  fi
  if ! command -v npm >/dev/null 2>&1; then
    log "installing npm"
    apt_install npm || die "could not install npm (apt-get install npm)"
  fi
  BROWSER_HASH="$(sha256sum tests/browser/package-lock.json | cut -d' ' -f1)"
  if [ -f tests/browser/node_modules/axe-core/axe.min.js ] && stamp_ok tests/browser/node_modules "$BROWSER_HASH"; then
    log "tests/browser/node_modules is up to date"
  else
    log "installing axe-core into tests/browser (npm ci)"
    (cd tests/browser && quiet npm ci --no-audit --no-fund) || die "npm ci in tests/browser failed"
    echo "$BROWSER_HASH" >"tests/browser/node_modules/$STAMP_NAME"
  fi
fi
