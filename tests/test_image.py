"""The container image, built as README.md says (deploy/image/build.sh, buildah, no daemon), then inspected.

No container can be started on the machines this project is built on (crun: "cgroups in hybrid mode not
supported"), so the last test does what a runtime does with an image short of cgroups and a network
namespace: unpacks its layers, and starts its entrypoint as PID 1 of new mount and PID namespaces, chrooted
into the unpacked file system, as the image's user, with only the image's environment (and $PORT, as
Knative sets it), the models mounted read-only; then asks it for a chat completion and stops it with
SIGTERM."""

import json
import os
import signal
import subprocess
import tarfile
import time

import httpx
import pytest

from support import DEFAULT_MODEL, ROOT, free_port

ARCHIVE = ROOT / "target" / "image" / "nnspin-test.oci.tar"
ENTRYPOINT = "/usr/local/bin/nnspin"


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The image's config and its unpacked file system. Built from the debug host the other tests use (the
    documented command ships the release build; the files are otherwise the same)."""
    subprocess.run([str(ROOT / "deploy" / "image" / "build.sh"), "--profile", "dev", "--tag", "nnspin:test",
                    "--archive", str(ARCHIVE)], cwd=ROOT, check=True, timeout=1200)
    directory = tmp_path_factory.mktemp("image")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(directory / "oci", filter="tar")

    def blob(digest):
        return directory / "oci" / "blobs" / digest.replace(":", "/")

    (entry,) = json.loads((directory / "oci" / "index.json").read_text())["manifests"]
    manifest = json.loads(blob(entry["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    rootfs = directory / "rootfs"
    for layer in manifest["layers"]:
        # Modes as they are in the layer (the "tar" filter would clear /tmp's world-writable bits).
        with tarfile.open(blob(layer["digest"])) as files:
            files.extractall(rootfs, filter="fully_trusted")
    return config, rootfs


def test_the_image_runs_nnspin_up_as_a_non_root_user_on_port(image):
    config, _ = image
    settings = config["config"]
    assert settings["Entrypoint"] == [ENTRYPOINT]
    assert settings["Cmd"] == ["up", "-f", "/app"]
    assert settings["User"] == "10001:10001"
    assert settings["WorkingDir"] == "/app"
    assert "PORT=8080" in settings["Env"]
    assert settings["ExposedPorts"] == {"8080/tcp": {}}
    assert settings["StopSignal"] == "SIGTERM"
    assert config["architecture"] == "amd64" and config["os"] == "linux"


def test_the_image_holds_the_host_the_components_and_the_libraries_and_no_python(image):
    _, rootfs = image
    files = {str(path.relative_to(rootfs)) for path in rootfs.rglob("*") if path.is_file()}
    for expected in ["usr/local/bin/nnspin", "app/spin.toml", "app/target/wasm32-wasip2/release/nnspin_openai.wasm",
                     "app/target/wasm32-wasip2/release/nnspin_locallab.wasm",
                     "opt/openvino/libs/libopenvino_intel_cpu_plugin.so", "etc/passwd"]:
        assert expected in files
    assert any(f.startswith("opt/onnxruntime/lib/libonnxruntime.so.") for f in files)
    assert any(f.startswith("opt/openvino/libs/libopenvino_c.so.") for f in files)
    assert not [f for f in files if "python" in f.lower() or f.endswith(".py")]
    # Nothing but /tmp is writable by the image's user.
    assert (rootfs / "tmp").stat().st_mode & 0o1777 == 0o1777
    assert not [f for f in files if (rootfs / f).stat().st_uid == 10001 or (rootfs / f).stat().st_mode & 0o002]
    assert "nnspin:x:10001:10001:" in (rootfs / "etc" / "passwd").read_text()
    # No models unless baked in with --model: they are mounted.
    assert not any(f.startswith("app/models/") for f in files)


def test_the_images_entrypoint_serves_from_its_own_files_and_drains_on_sigterm(image):
    config, rootfs = image
    settings = config["config"]
    port = free_port()
    environment = dict(variable.split("=", 1) for variable in settings["Env"]) | {"PORT": str(port)}
    uid, gid = settings["User"].split(":")
    # The mounts a runtime makes, in a mount namespace of their own; then the entrypoint in a PID namespace,
    # rooted in the image's files, in its working directory, as its user.
    mounts = " && ".join([f"mount --rbind /dev {rootfs}/dev", f"mount --rbind /sys {rootfs}/sys",
                          f"mount --bind -o ro {ROOT / 'models'} {rootfs}/app/models"])
    entrypoint = ["unshare", "--pid", "--fork", "--mount-proc", f"--root={rootfs}", f"--wd={settings['WorkingDir']}",
                  f"--setuid={uid}", f"--setgid={gid}", *settings["Entrypoint"], *settings["Cmd"]]
    runtime = subprocess.Popen(["unshare", "--mount", "sh", "-c", f'{mounts} && exec "$@"', "sh", *entrypoint],
                               env=environment, stdout=subprocess.PIPE, text=True)
    try:
        assert runtime.stdout.readline().strip() == f"nnspin listening on http://0.0.0.0:{port}"
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while httpx.get(url + "/health").status_code != 200:
            assert time.monotonic() < deadline and runtime.poll() is None, "the models did not load"
            time.sleep(0.5)
        (host,) = [int(p) for p in subprocess.check_output(["pgrep", "-P", str(runtime.pid)], text=True).split()]
        status = dict(line.split(":", 1) for line in open(f"/proc/{host}/status").read().splitlines())
        assert status["Uid"].split()[0] == "10001" and status["NSpid"].split()[-1] == "1"
        reply = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "model": DEFAULT_MODEL, "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        })
        assert reply.status_code == 200, reply.text
        assert "Paris" in reply.json()["choices"][0]["message"]["content"]
        # As PID 1 it has no default signal actions: nnspin handles SIGTERM itself, drains, and exits 0.
        os.kill(host, signal.SIGTERM)
        assert runtime.wait(timeout=60) == 0
    finally:
        if runtime.poll() is None:
            runtime.kill()
            runtime.wait()
