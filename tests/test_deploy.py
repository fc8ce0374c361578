"""The deployment recipes under deploy/, checked offline: the plain Kubernetes manifests against the
Kubernetes API schemas (kubernetes-validate, strict), the Knative Service against Knative Serving's schemas
(@kubernetes-models/knative), and the command lines they start against the real `nnspin up`."""

import json
import os
import shutil
import socket
import subprocess

import httpx
import kubernetes_validate
import pytest
import yaml

from support import ROOT, TINY_MODEL, failed_start, openai_app, running_host

DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.33.0"


def documents(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", sorted((DEPLOY / "kubernetes").glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_validate_strictly(path):
    kinds = []
    for document in documents(path):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        kinds.append(document["kind"])
    assert kinds == ["Deployment", "Service", "HorizontalPodAutoscaler"]


def test_a_manifest_with_a_mistake_is_refused():
    """The validation can fail: a misspelt field is caught."""
    deployment = documents(DEPLOY / "kubernetes" / "nnspin.yaml")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def validate_knative(docs):
    node = shutil.which("node")
    assert node, "Node.js is needed (tests/run.sh installs it and the schemas with npm)"
    return subprocess.run(
        [node, "validate_knative.mjs"], cwd=ROOT / "tests" / "node", capture_output=True, text=True, timeout=60,
        input="".join(json.dumps(d) + "\n" for d in docs),
    )


def test_the_knative_service_validates_and_scales_to_zero():
    (service,) = documents(DEPLOY / "knative" / "service.yaml")
    result = validate_knative([service])
    assert result.returncode == 0, result.stdout + result.stderr
    template = service["spec"]["template"]
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "0"
    # One replica per nnspin's per-model sequence capacity, the same figure on both sides.
    args = template["spec"]["containers"][0]["args"]
    assert template["spec"]["containerConcurrency"] == int(args[args.index("--max-sequences-per-model") + 1])
    assert "--listen" not in args, "Knative sets $PORT, which nnspin listens on"
    broken = json.loads(json.dumps(service))
    broken["spec"]["template"]["spec"]["containerConcurrency"] = "eight"
    assert validate_knative([broken]).returncode == 1


def test_every_recipe_starts_nnspin_with_arguments_it_accepts():
    """Each container's command line parses (`nnspin up` refuses unknown flags and bad values, so a typo here
    would be a crash loop there)."""
    binary = ROOT / "target" / "debug" / "nnspin"
    recipes = [*documents(DEPLOY / "kubernetes" / "nnspin.yaml")[:1], *documents(DEPLOY / "knative" / "service.yaml")]
    for recipe in recipes:
        args = recipe["spec"]["template"]["spec"]["containers"][0]["args"]
        result = subprocess.run([str(binary), *args, "--help"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, (args, result.stderr)
        # The check can fail: a bad value is refused.
        bad = list(args)
        bad[bad.index("--max-sequences-per-model") + 1] = "many"
        refused = subprocess.run([str(binary), *bad, "--help"], capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0 and "many" in refused.stderr


def test_spinkubes_command_line_serves_the_app(tmp_path):
    """SpinKube's spinImage executor runs `up --listen 0.0.0.0:80 -f <app> --runtime-config-file <file>`:
    a directory for the app, and Spin's runtime config, local LLM compute accepted."""
    app = tmp_path / "app"
    app.mkdir()
    openai_app(app, [TINY_MODEL])
    config = tmp_path / "runtime-config.toml"
    config.write_text('[llm_compute]\ntype = "spin"\n')
    with running_host(app, "--runtime-config-file", str(config)) as host:
        assert httpx.get(host.url + "/health").status_code == 200
    config.write_text('[key_value_store.default]\ntype = "redis"\nurl = "redis://localhost"\n')
    error = failed_start(app, "--runtime-config-file", str(config))
    assert error.splitlines()[0].startswith("nnspin: error: runtime config")
    assert "[key_value_store] is not supported" in error


def test_without_listen_nnspin_listens_on_port(tmp_path):
    """Knative's runtime contract: the platform says the port in $PORT."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    manifest = openai_app(tmp_path, [TINY_MODEL])
    binary = ROOT / "target" / "debug" / "nnspin"
    process = subprocess.Popen([str(binary), "up", "-f", str(manifest), "--models-dir", str(ROOT / "models")],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={k: v for k, v in {**os.environ, "PORT": str(port)}.items()
                                    if k != "NNSPIN_LISTEN"})
    try:
        assert process.stdout.readline().strip() == f"nnspin listening on http://0.0.0.0:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
