#!/usr/bin/env bash
# Fuzzes every parser of untrusted input for a bounded time: tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
# (default 60 s each, every target). Needs nightly Rust and cargo-fuzz, installed here when missing.
# A crash stops its target, leaves the input in tests/fuzz/artifacts/TARGET/ and makes this exit non-zero;
# reproduce with: cargo +nightly fuzz run --fuzz-dir tests/fuzz TARGET tests/fuzz/artifacts/TARGET/crash-…
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(openai_request locallab_request structured_output chat_template spin_manifest)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# chat_template renders the default model's real template.
[ -f models/smollm2-135m-instruct/tokenizer.json ] || tools/setup.sh

# Everything fuzzed is safe Rust, where a bug shows as a panic: no sanitizer, so it builds and runs faster.
fuzz() { cargo +nightly fuzz "$1" --fuzz-dir tests/fuzz --sanitizer none --target-dir target/fuzz "${@:2}"; }
fuzz build
failed=()
for target in "${targets[@]}"; do
  mkdir -p "tests/fuzz/corpus/$target"
  printf '\n==> %s (%s s)\n' "$target" "$seconds"
  if ! fuzz run "$target" "tests/fuzz/corpus/$target" "tests/fuzz/seeds/$target" \
      -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 2>&1 | tail -n 25; then
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashes in: ${failed[*]} (inputs under tests/fuzz/artifacts/)" >&2
  exit 1
fi
echo "no crashes"
