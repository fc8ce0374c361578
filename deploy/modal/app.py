"""nnspin on Modal: a web server function that scales to zero, one container per 8 concurrent requests.

    deploy/image/build.sh            # stages target/image/rootfs (the image's file system), which this copies
    modal volume create nnspin-models && modal volume put nnspin-models models/ /   # every model spin.toml names
    modal deploy deploy/modal/app.py # prints the URL; the OpenAI API is at URL/v1

Modal runs its functions on its own Debian image with Python (its runtime needs it); the nnspin host, its
components and the inference libraries are copied in from the staged file system, and the host runs beside
Modal's runtime as a child process. The models live in a Modal Volume mounted at /models. A container starts
when a request arrives and none is idle, and stays SCALEDOWN_WINDOW seconds after its last request: a cold
start loads the models, which /health reports (503 until loaded), so the function returns only once they are.
"""

import pathlib
import subprocess
import time
import urllib.error
import urllib.request

import modal

ROOTFS = pathlib.Path(__file__).resolve().parents[2] / "target" / "image" / "rootfs"
PORT = 8080
# nnspin's per-model sequence capacity, and so the requests one container takes before Modal starts another.
SEQUENCES = 8
SCALEDOWN_WINDOW = 60
NNSPIN_ARGS = ["up", "-f", "/app", "--models-dir", "/models", "--listen", f"0.0.0.0:{PORT}",
               "--max-sequences-per-model", str(SEQUENCES), "--shutdown-grace-secs", "30"]

image = (
    modal.Image.debian_slim(python_version="3.12")
    .apt_install("libstdc++6")
    .env({"ORT_DYLIB_PATH": "/opt/onnxruntime/lib", "OPENVINO_LIB_PATH": "/opt/openvino/libs",
          "NNSPIN_CACHE_DIR": "/tmp/nnspin-cache"})
    .add_local_dir(ROOTFS / "opt", "/opt")
    .add_local_dir(ROOTFS / "usr" / "local" / "bin", "/usr/local/bin")
    .add_local_dir(ROOTFS / "app", "/app")
)
app = modal.App("nnspin")
models = modal.Volume.from_name("nnspin-models", create_if_missing=True)


@app.function(image=image, volumes={"/models": models}, cpu=2.0, memory=6144, min_containers=0,
              scaledown_window=SCALEDOWN_WINDOW, timeout=600)
@modal.concurrent(max_inputs=SEQUENCES)
@modal.web_server(PORT, startup_timeout=300)
def serve():
    host = subprocess.Popen(["/usr/local/bin/nnspin", *NNSPIN_ARGS])
    while host.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"nnspin exited with status {host.returncode} before its models were loaded")
