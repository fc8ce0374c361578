#!/usr/bin/env bash
# Runs every test: formatting, the Rust unit and integration tests (host and guests), and the
# end-to-end tests that drive the real host with the official OpenAI SDKs (Python and Node).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
# A command from Debian's packages, installed when missing and this is root on Debian.
need() {
  local command=$1; shift
  command -v "$command" >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq "$@" >/dev/null
  else
    echo "$command is needed: apt-get install $*" >&2
    exit 1
  fi
}
# The official OpenAI Node SDK, for the Node half of the SDK tests.
need npm nodejs npm
npm ci --prefix tests/node --no-audit --no-fund --silent
# KServe's API types, read from its SDK's wheel by tests/test_deploy.py (not installed: it pulls in a server).
.venv/bin/pip download --quiet --disable-pip-version-check --no-deps kserve==0.21.0 -d target/test-fixtures/kserve
# buildah, which builds the container image without a daemon (tests/test_image.py).
need buildah buildah
# HAProxy, the load balancer in front of the replicas of tests/test_replicas.py.
need haproxy haproxy
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
# The portable build's compiled-in tokenizer and template (the component itself: bench/portable.py).
NNSPIN_PORTABLE_MODEL=models/smollm2-135m-instruct cargo test -p nnspin-guest --features portable
printf '\n==> end-to-end tests\n'
.venv/bin/python -m pytest tests -v --durations=20
