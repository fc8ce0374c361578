"""Each GGUF architecture the export builds, on a tiny random-weight GGUF written by tools/tiny_gguf.py
(its matrices in seven GGUF types; Phi-3 with a sliding window the sequence crosses, Gemma 3 with five
sliding-window layers and a global one): the exported model's logits, decoded one token at a time through its KV
cache, match a NumPy forward pass of the same file (tools/gguf_reference.py, which reads it as llama.cpp
does and shares no code with the export), and the host serves it through the OpenAI component. An
architecture the export cannot build is refused with one line."""

import subprocess
import sys

import gguf
import httpx
import numpy as np
import pytest

from support import ROOT, openai_app, running_host

sys.path.insert(0, str(ROOT / "tools"))
import gguf_reference  # noqa: E402
import tiny_gguf  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each architecture's tiny GGUF and its exported model directory, named `tiny-ARCH`."""
    root = tmp_path_factory.mktemp("architectures")
    models = {}
    for arch in tiny_gguf.ARCHITECTURES:
        path = tiny_gguf.write(arch, root / f"tiny-{arch}.gguf")
        subprocess.run([sys.executable, "tools/export_model.py", "--gguf", str(path), "--out",
                        str(root / "models" / f"tiny-{arch}")], cwd=ROOT, check=True, capture_output=True)
        models[arch] = (path, root / "models" / f"tiny-{arch}")
    return models


@pytest.mark.parametrize("arch", tiny_gguf.ARCHITECTURES)
def test_logits_match_a_reference_reading_of_the_same_file(exported, arch):
    path, model_dir = exported[arch]
    tokens = [int(t) for t in np.random.default_rng(1).integers(0, 49152, 24)]
    expected = gguf_reference.logits(path, tokens)
    got = gguf_reference.exported_logits(model_dir, tokens)
    delta = np.abs(expected - got)
    print(f"{arch}: max |Δlogit| {delta.max():.2e}, mean {delta.mean():.2e} (logits up to {np.abs(expected).max():.1f})")
    assert delta.max() < 1e-4
    assert (expected.argmax(-1) == got.argmax(-1)).all()


def test_the_host_serves_every_architecture(exported, tmp_path):
    models_dir = next(iter(exported.values()))[1].parent
    names = [f"tiny-{arch}" for arch in tiny_gguf.ARCHITECTURES]
    with running_host(openai_app(tmp_path, names), models_dir=models_dir) as host:
        for name in names:
            response = httpx.post(f"{host.url}/v1/chat/completions", timeout=60, json={
                "model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                "temperature": 0})
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["completion_tokens"] >= 1


def test_an_architecture_it_cannot_build_is_refused_in_one_line(tmp_path):
    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = subprocess.run([sys.executable, "tools/export_model.py", "--gguf", str(path), "--out",
                             str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "unsupported GGUF architecture 'mamba': the export builds llama, qwen2, qwen3, phi3, gemma3, not its layer "
        "structure")
