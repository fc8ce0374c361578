#!/usr/bin/env bash
# Sets up what is missing, then serves spin.toml (default http://127.0.0.1:3000). Extra arguments go to
# `nnspin up` (see `target/debug/nnspin up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
exec target/debug/nnspin up "$@"
