"""deploy/kserve.yaml and deploy/kserve-examples.yaml: every document is what KServe's own types
accept, the parts agree with each other and with the host, and the runtime's command line, run
on a folder laid out as KServe's storage initializer (or model agent) leaves /mnt/models, serves
v2 inference over HTTP and gRPC.

The types are the kserve Python SDK's (V1alpha1ClusterServingRuntime, V1beta1InferenceService,
V1alpha1TrainedModel, and the kubernetes client's V1Container, V1Probe, ... inside them), checked
strictly by kserve_types.py in a process of its own (kserve and tritonclient.grpc cannot share
one). kubernetes-validate has no schemas for KServe's kinds, so it checks the pod the runtime's
container would run in.
"""

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ECHO, MODEL, REFERENCE, ROOT, running_host

DEPLOY = ROOT / "deploy"
MANIFESTS = [DEPLOY / "kserve.yaml", DEPLOY / "kserve-examples.yaml"]
PYTHON = Path(sys.executable)
VALIDATE = PYTHON.with_name("kubernetes-validate")
HERE = Path(__file__).resolve().parent


def types(*paths):
    """kserve_types.py's verdict on `paths`: errors, kinds, and KServe's default ports."""
    out = subprocess.run(
        [str(PYTHON), str(HERE / "kserve_types.py"), *map(str, paths)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def documents():
    docs = []
    for path in MANIFESTS:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def named(kind, name):
    (found,) = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def of_kind(kind):
    return [d for d in documents() if d["kind"] == kind]


def flag(args, name):
    return args[args.index(name) + 1]


def port(address):
    return int(address.rsplit(":", 1)[1])


# --- KServe's types ----------------------------------------------------------------------------

def test_every_document_is_what_kserves_types_accept():
    verdict = types(*MANIFESTS)
    assert verdict["errors"] == []
    assert sorted(set(verdict["kinds"])) == ["ClusterServingRuntime", "InferenceService", "TrainedModel"]


@pytest.mark.parametrize("manifest,old,new,expected", [
    # An unknown field, at the top of a spec and deep in a container.
    ("kserve.yaml", "  protocolVersions:", "  protocolVersion:", "has no field 'protocolVersion'"),
    ("kserve.yaml", "      image: registry", "      imagee: registry", "V1Container has no field 'imagee'"),
    ("kserve-examples.yaml", "    framework: wasm", "    framwork: wasm", "has no field 'framwork'"),
    ("kserve-examples.yaml", "      storageUri: s3://models/digits/guest_model.wasm",
     "      storageURI: s3://models/digits/guest_model.wasm", "has no field 'storageURI'"),
    # A value of the wrong type.
    ("kserve.yaml", "autoSelect: true, priority: 1", 'autoSelect: "yes", priority: 1', "bool, not str"),
    ("kserve.yaml", "failureThreshold: 300", 'failureThreshold: "300"', "int, not str"),
    # A required field missing.
    ("kserve.yaml", "    - name: kserve-container", "    - image: x", "name: Field required"),
    # The wrong API group version.
    ("kserve-examples.yaml", "apiVersion: serving.kserve.io/v1alpha1\nkind: TrainedModel",
     "apiVersion: serving.kserve.io/v1beta1\nkind: TrainedModel", "not serving.kserve.io/v1alpha1"),
])
def test_the_type_check_fails_on_a_broken_manifest(tmp_path, manifest, old, new, expected):
    """The check above can fail: each mutation is one mistake it must catch."""
    text = (DEPLOY / manifest).read_text()
    assert old in text, old
    bad = tmp_path / manifest
    bad.write_text(text.replace(old, new, 1))
    errors = types(bad)["errors"]
    assert any(expected in e for e in errors), errors


def runtime_pod(runtime):
    """The pod a runtime's container would run in, as KServe renders it for an InferenceService."""
    spec = runtime["spec"]
    containers = json.loads(json.dumps(spec["containers"]).replace("{{.Name}}", "digits"))
    for container in containers:
        container.setdefault("volumeMounts", []).append({"name": "kserve-provision-location",
                                                         "mountPath": "/mnt/models", "readOnly": True})
    volumes = spec.get("volumes", []) + [{"name": "kserve-provision-location", "emptyDir": {}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "digits-predictor"},
            "spec": {"containers": containers, "volumes": volumes}}


@pytest.mark.parametrize("runtime", ["wasm-host", "wasm-host-multi"])
def test_the_runtimes_pod_passes_kubernetes_validate_strict(tmp_path, runtime):
    pod = tmp_path / "pod.yaml"
    pod.write_text(yaml.safe_dump(runtime_pod(named("ClusterServingRuntime", runtime))))
    out = subprocess.run([str(VALIDATE), "--strict", "-k", "1.35", str(pod)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " passed for resource " in out.stdout + out.stderr


# --- The parts agree -----------------------------------------------------------------------------

def formats(runtime):
    return {f["name"]: f for f in runtime["spec"]["supportedModelFormats"]}


def runtime_for(isvc):
    """The runtime KServe picks: the one named, else the highest-priority autoSelect one here."""
    model = isvc["spec"]["predictor"]["model"]
    wanted = model["modelFormat"]["name"]
    if "runtime" in model:
        return named("ClusterServingRuntime", model["runtime"])
    candidates = [r for r in of_kind("ClusterServingRuntime")
                  if formats(r).get(wanted, {}).get("autoSelect")]
    assert candidates, f"no runtime here selects {wanted} automatically"
    return max(candidates, key=lambda r: formats(r)[wanted].get("priority", 0))


def test_each_inference_service_asks_for_a_format_and_protocol_its_runtime_serves():
    for isvc in of_kind("InferenceService"):
        model = isvc["spec"]["predictor"]["model"]
        runtime = runtime_for(isvc)
        assert model["modelFormat"]["name"] in formats(runtime), isvc["metadata"]["name"]
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]


def test_the_runtimes_serve_wasm_and_onnx_over_v2_http_and_grpc():
    single = named("ClusterServingRuntime", "wasm-host")
    assert set(formats(single)) == {"wasm", "onnx"}
    assert formats(single)["wasm"]["autoSelect"] is True
    assert set(single["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    multi = named("ClusterServingRuntime", "wasm-host-multi")
    assert not any(f.get("autoSelect") for f in formats(multi).values()), "picked only by name"


def test_the_ports_and_probes_are_kserves_and_the_host_binds_them():
    ports = types(*MANIFESTS)["ports"]
    for runtime in of_kind("ClusterServingRuntime"):
        (container,) = runtime["spec"]["containers"]
        assert container["name"] == "kserve-container", "the name KServe merges the predictor into"
        args = container["args"]
        assert port(flag(args, "--bind")) == ports["http"]
        assert port(flag(args, "--grpc-bind")) == ports["grpc"]
        assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == str(ports["http"])
        for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live"),
                            ("startupProbe", "/v2/health/live")):
            if probe in container:
                assert container[probe]["httpGet"] == {"path": path, "port": ports["http"]}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {e["name"]: e["value"] for e in container["env"]}["WASM_HOST_CACHE_DIR"] in mounts
    grpc = named("InferenceService", "digits-grpc")["spec"]["predictor"]["model"]
    assert grpc["protocolVersion"] == "grpc-v2"
    assert [p["containerPort"] for p in grpc["ports"] if p["name"] == "h2c"] == [ports["grpc"]]


def test_the_single_model_runtime_serves_mnt_models_under_the_inference_services_name():
    (container,) = named("ClusterServingRuntime", "wasm-host")["spec"]["containers"]
    # A pod compiles its model afresh; the startup probe gives it minutes before liveness counts.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    args = container["args"]
    assert flag(args, "--model-name") == "{{.Name}}"
    assert args[-1] == "/mnt/models"
    assert "--model-control" not in args, "no repository API on the public port"


def test_trained_models_name_a_multi_model_inference_service_that_has_room_for_them():
    multi = named("ClusterServingRuntime", "wasm-host-multi")
    (container,) = multi["spec"]["containers"]
    assert flag(container["args"], "--model-control") == "explicit"
    assert flag(container["args"], "--model-repository") == "/mnt/models"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert "WASM_HOST_ADMIN_TOKEN" not in env, "KServe's model agent sends no credentials"
    for trained in of_kind("TrainedModel"):
        isvc = named("InferenceService", trained["spec"]["inferenceService"])
        model = isvc["spec"]["predictor"]["model"]
        assert "storageUri" not in model, "no storageUri: KServe's model agent serves it"
        assert model["runtime"] == "wasm-host-multi"
        assert trained["spec"]["model"]["framework"] in formats(multi)
        assert trained["spec"]["model"]["memory"] == env["WASM_HOST_MEMORY_LIMIT"].replace("MiB", "Mi")


# --- The runtime's command line, run -------------------------------------------------------------

def host_args(runtime, mnt_models, name):
    """The container's arguments as KServe runs them, on loopback: {{.Name}} and /mnt/models
    substituted, --bind and --grpc-bind left to the suite (which binds 127.0.0.1:0)."""
    (container,) = runtime["spec"]["containers"]
    assert container["command"] == ["/wasm-host"]
    args = [a.replace("{{.Name}}", name) for a in container["args"]]
    assert args.pop(0) == "serve"
    for option in ("--bind", "--grpc-bind"):
        i = args.index(option)
        del args[i:i + 2]
    args = [str(mnt_models) if a == "/mnt/models" else a for a in args]
    env = {e["name"]: e["value"] for e in container["env"]}
    return args, env


def get(addr, path):
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as response:
        return response.status, response.read()


def post(addr, path, body):
    request = urllib.request.Request(f"http://{addr}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
        return response.status, (json.loads(body) if body else None)


def kserve_grpc(grpc_addr, *args):
    out = subprocess.run([str(PYTHON), str(HERE / "kserve_grpc_client.py"), grpc_addr, *map(str, args)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_the_runtime_serves_what_the_storage_initializer_leaves_over_http_and_grpc(tmp_path, reference):
    """The file keeps its uploaded name; the model is served under the InferenceService's."""
    mnt = tmp_path / "mnt-models"
    mnt.mkdir()
    shutil.copy(MODEL, mnt / "uploaded-digits.wasm")
    args, env = host_args(named("ClusterServingRuntime", "wasm-host"), mnt, "digits")
    env["WASM_HOST_CACHE_DIR"] = str(tmp_path / "cache")
    with running_host(args, env, grpc=True) as (addr, grpc_addr):
        (container,) = named("ClusterServingRuntime", "wasm-host")["spec"]["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert get(addr, container[probe]["httpGet"]["path"])[0] == 200, probe
        row = reference["inputs"][0].tolist()
        status, body = post(addr, "/v2/models/digits/infer", {
            "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": row}],
            "outputs": [{"name": "label"}]})
        assert status == 200 and body["model_name"] == "digits"
        assert body["outputs"][0]["data"] == [int(reference["labels"][0])]
        # kserve's own gRPC client: health, then all 200 reference rows, typed and raw.
        assert kserve_grpc(grpc_addr, "health") == {"live": True, "ready": True, "model_ready": True}
        result = kserve_grpc(grpc_addr, "rows", REFERENCE)
        for form in ("typed", "raw"):
            assert result[form]["labels"] == reference["labels"].tolist(), form


def test_the_multi_model_runtime_loads_what_the_model_agent_puts_in_mnt_models(tmp_path):
    """KServe's model agent downloads a TrainedModel into /mnt/models/NAME, then POSTs `{}` to
    localhost:8080/v2/repository/models/NAME/load with no credentials; deleting it removes the
    folder and POSTs .../unload."""
    mnt = tmp_path / "mnt-models"
    mnt.mkdir()
    args, env = host_args(named("ClusterServingRuntime", "wasm-host-multi"), mnt, "models")
    env["WASM_HOST_CACHE_DIR"] = str(tmp_path / "cache")
    with running_host(args, env) as addr:
        assert get(addr, "/v2/health/live")[0] == 200
        (mnt / "echo").mkdir()
        shutil.copy(ECHO, mnt / "echo" / "echo_model.wasm")
        status, _ = post(addr, "/v2/repository/models/echo/load", {})
        assert status == 200
        assert get(addr, "/v2/health/ready")[0] == 200
        status, body = post(addr, "/v2/models/echo/infer", {
            "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2]}]})
        assert status == 200 and body["outputs"][0]["data"] == [1.5, -2]
        shutil.rmtree(mnt / "echo")
        status, _ = post(addr, "/v2/repository/models/echo/unload", {})
        assert status == 200
        with pytest.raises(urllib.error.HTTPError) as gone:
            post(addr, "/v2/models/echo/infer", {
                "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2]}]})
        assert gone.value.code in (400, 404)
