"""The deployment recipes under deploy/, checked offline: the plain Kubernetes manifests against the
Kubernetes API schemas (kubernetes-validate, strict), the Knative Service against Knative Serving's schemas
(@kubernetes-models/knative), KServe's resources against the API types of KServe's SDK, the Modal app
against the Modal client, and the command lines they start against the real `nnspin up`."""

import ast
import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import subprocess
import zipfile
from functools import cache

import httpx
import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml

from support import ROOT, TINY_MODEL, failed_start, free_port, openai_app, running_host

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


KSERVE_SDK = ROOT / "target" / "test-fixtures" / "kserve"


@cache
def kserve_types() -> dict[str, tuple[dict[str, str], set[str]]]:
    """KServe's API types as its SDK declares them (code generated from KServe's OpenAPI document): for each
    type, its fields' JSON names and types, and the fields it requires. Read from the SDK's wheel, which
    tests/run.sh downloads, not installed: the SDK's package pulls in its model server and its dependencies."""
    wheels = sorted(KSERVE_SDK.glob("kserve-*.whl"))
    assert wheels, f"the KServe SDK's wheel is needed in {KSERVE_SDK} (tests/run.sh downloads it)"
    types = {}
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for name in wheel.namelist():
            if not re.fullmatch(r"kserve/models/v1\w+\.py", name):
                continue
            source = wheel.read(name).decode()
            for node in ast.parse(source).body:
                if not isinstance(node, ast.ClassDef):
                    continue
                tables = {target.id: ast.literal_eval(statement.value) for statement in node.body
                          if isinstance(statement, ast.Assign) for target in statement.targets
                          if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map")}
                fields = {tables["attribute_map"][key]: kind for key, kind in tables["openapi_types"].items()}
                required = {tables["attribute_map"][key] for key in re.findall(
                    r"Invalid value for `(\w+)`, must not be `None`", ast.get_source_segment(source, node))}
                types[node.name] = (fields, required)
    return types


@cache
def kubernetes_definitions() -> referencing.Registry:
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    definitions = json.loads((schemas / f"v{KUBERNETES_VERSION}-local-strict" / "_definitions.json").read_text())
    return referencing.Resource.from_contents(definitions) @ referencing.Registry()


def kubernetes_definition(name: str) -> str:
    """The Kubernetes schema of an SDK type name that KServe's types embed (V1Container, V1ObjectMeta)."""
    definitions = kubernetes_definitions().contents("https://kubernetes.io/api/_definitions.json")["$defs"]
    version, kind = re.fullmatch(r"(V\d\w*?)([A-Z]\w*)", name).groups()
    matches = [key for key in definitions if key.endswith(f".{version.lower()}.{kind}")]
    assert matches, f"{name} is neither a KServe nor a Kubernetes type"
    return min(matches, key=lambda key: (not key.startswith("io.k8s.api.core."), key))


def check_kserve(value, kind: str, where: str = "") -> list[str]:
    """What is wrong with `value` as a `kind` of KServe's API: unknown fields, wrong types, missing ones."""
    if match := re.fullmatch(r"list\[(.+)\]", kind):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, item in enumerate(value) for e in check_kserve(item, match[1], f"{where}[{i}]")]
    if match := re.fullmatch(r"dict\(str, (.+)\)", kind):
        if not isinstance(value, dict):
            return [f"{where}: expected a map"]
        return [e for key, item in value.items() for e in check_kserve(item, match[1], f"{where}.{key}")]
    scalars = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    if kind in scalars:
        wrong = not isinstance(value, scalars[kind]) or (kind == "int" and isinstance(value, bool))
        return [f"{where}: expected {kind}, got {value!r}"] if wrong else []
    if kind == "object":
        return []
    if kind not in kserve_types():
        schema = {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/{kubernetes_definition(kind)}"}
        validator = jsonschema.Draft202012Validator(schema, registry=kubernetes_definitions())
        return [f"{where}.{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(value)]
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({kind})"]
    fields, required = kserve_types()[kind]
    errors = [f"{where}: {name} is required" for name in sorted(required - value.keys())]
    errors += [f"{where}.{name}: not a field of {kind}" for name in value if name not in fields]
    return errors + [e for name, item in value.items() if name in fields
                     for e in check_kserve(item, fields[name], f"{where}.{name}")]


KSERVE_KINDS = {"ServingRuntime": "V1alpha1ServingRuntime", "InferenceService": "V1beta1InferenceService"}


def test_the_kserve_resources_validate_against_kserves_api_types():
    documents_ = documents(DEPLOY / "kserve" / "inferenceservice.yaml")
    assert [d["kind"] for d in documents_] == ["ServingRuntime", "InferenceService"]
    for document in documents_:
        assert check_kserve(document, KSERVE_KINDS[document["kind"]], document["kind"]) == []
    runtime, service = documents_
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    assert service["spec"]["predictor"]["model"]["modelFormat"]["name"] in [
        f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    args = runtime["spec"]["containers"][0]["args"]
    # KServe mounts the storageUri there; one replica per nnspin's sequence capacity, as on Knative.
    assert args[args.index("--models-dir") + 1] == "/mnt/models"
    assert service["spec"]["predictor"]["containerConcurrency"] == int(args[args.index("--max-sequences-per-model") + 1])
    # The check can fail: a misplaced field, a wrong type and a mistake inside a Kubernetes type are caught.
    broken = json.loads(json.dumps(service))
    broken["spec"]["predictor"]["model"]["storageURI"] = broken["spec"]["predictor"]["model"].pop("storageUri")
    broken["spec"]["predictor"]["minReplicas"] = "0"
    assert len(check_kserve(broken, "V1beta1InferenceService")) == 2
    broken = json.loads(json.dumps(runtime))
    broken["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] = 7
    del broken["spec"]["containers"][0]["name"]
    assert len(check_kserve(broken, "V1alpha1ServingRuntime")) == 2


def modal_app():
    """deploy/modal/app.py as `modal deploy` imports it: the real Modal client checks the function's
    options (ports, concurrency, scale-down window) as its decorators run."""
    spec = importlib.util.spec_from_file_location("nnspin_modal_app", DEPLOY / "modal" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_modal_app_defines_a_web_server_that_scales_to_zero():
    app = modal_app()
    import modal
    assert app.app.name == "nnspin"
    assert isinstance(app.serve, modal.Function)
    args = app.NNSPIN_ARGS
    assert args[args.index("--listen") + 1].endswith(f":{app.PORT}")
    assert int(args[args.index("--max-sequences-per-model") + 1]) == app.SEQUENCES


def test_every_recipe_starts_nnspin_with_arguments_it_accepts():
    """Each container's command line parses (`nnspin up` refuses unknown flags and bad values, so a typo here
    would be a crash loop there)."""
    binary = ROOT / "target" / "debug" / "nnspin"
    recipes = [*documents(DEPLOY / "kubernetes" / "nnspin.yaml")[:1], *documents(DEPLOY / "knative" / "service.yaml")]
    command_lines = [recipe["spec"]["template"]["spec"]["containers"][0]["args"] for recipe in recipes]
    command_lines.append(documents(DEPLOY / "kserve" / "inferenceservice.yaml")[0]["spec"]["containers"][0]["args"])
    command_lines.append(modal_app().NNSPIN_ARGS)
    for args in command_lines:
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
    port = free_port()
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
