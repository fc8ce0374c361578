#!/usr/bin/env bash
# Runs every test: formatting, the Rust unit and integration tests (host and guests), and the
# end-to-end tests that drive the real host with the official OpenAI SDKs (Python and Node).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
# The official OpenAI Node SDK, for the Node half of the SDK tests.
if ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "Node.js and npm are needed: apt-get install nodejs npm" >&2
    exit 1
  fi
fi
npm ci --prefix tests/node --no-audit --no-fund --silent
# The stateful OpenVINO IR of the host's backend tests.
.venv/bin/python host/tests/fixtures/stateful_ir.py target/test-fixtures/stateful-ir
# The deliberately misbehaving component of the isolation tests.
cargo build --release --target wasm32-wasip2 -p nnspin-test-faults
# A Spin app written with spin-sdk, for the tests of Spin's LLM interface.
cargo build --release --target wasm32-wasip2 --manifest-path tests/components/spin-llm/Cargo.toml

printf '\n==> cargo fmt --check\n'
cargo fmt --all --check
cargo fmt --manifest-path tests/fuzz/Cargo.toml --check
cargo fmt --manifest-path tests/components/spin-llm/Cargo.toml --check
printf '\n==> cargo test\n'
cargo test --workspace
printf '\n==> end-to-end tests\n'
.venv/bin/python -m pytest tests -v
