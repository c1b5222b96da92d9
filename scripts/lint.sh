#!/usr/bin/env bash
# Lint as CI does: ruff's rules, ruff's formatting, then mypy (strict on the domain packages;
# pyproject.toml holds the configuration). Exits non-zero at the first tool that finds something.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PATHS=(fivesafes_tes tests bench)
.venv/bin/ruff check "${PATHS[@]}"
.venv/bin/ruff format --check "${PATHS[@]}"
.venv/bin/mypy
