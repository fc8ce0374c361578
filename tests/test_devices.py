"""Backends and devices chosen in configuration: GPU paths are wired and fail at start with one clear
line where no GPU is present, `tpu` is refused, and a per-model `[model.NAME]` table places one model
on another backend than the command line's default."""

import httpx

from support import TINY_MODEL, failed_start, openai_app, running_host


def test_gpu_without_a_gpu_fails_the_start_with_one_clear_line(tmp_path):
    manifest = openai_app(tmp_path, [TINY_MODEL])
    error = failed_start(manifest, "--device", "gpu")
    (line,) = error.strip().splitlines()
    assert "CUDAExecutionProvider" in line and "onnxruntime-gpu" in line
    line = failed_start(manifest, "--device", "tensorrt")
    assert "TensorrtExecutionProvider" in line
    line = failed_start(manifest, "--backend", "openvino", "--device", "gpu")
    assert "OpenVINO found no GPU device" in line
    line = failed_start(manifest, "--device", "tpu")
    assert "tpu is not supported" in line


def test_cpu_fallback_only_when_asked(tmp_path):
    with running_host(openai_app(tmp_path, [TINY_MODEL]), "--device", "gpu", "--cpu-fallback") as host:
        (model,) = httpx.get(host.openai_url + "/models").json()["data"]
        assert model["device"] == "cpu"
        assert "falling back to the CPU" in "".join(host.log)


def test_spin_toml_places_models_per_model(tmp_path):
    manifest = openai_app(tmp_path, [TINY_MODEL])
    with manifest.open("a") as toml:
        toml.write(f'\n[model.{TINY_MODEL}]\nbackend = "openvino"\ndevice = "cpu"\nthreads = 1\nformat = "onnx"\n'
                   'precision = "fast"\n')
    with running_host(manifest) as host:  # spin.toml places it, whatever the command line says
        (model,) = httpx.get(host.openai_url + "/models").json()["data"]
        assert (model["backend"], model["device"], model["precision"]) == ("openvino", "cpu", "fast")
    with manifest.open("a") as toml:
        toml.write('tpu = "yes"\n')
    assert "unknown field `tpu`" in failed_start(manifest)
