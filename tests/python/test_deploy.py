"""deploy/: the Kubernetes manifests validate for every supported Kubernetes version, their parts
agree with each other and with the host, and the Prometheus rules are checked by promtool.

kubernetes-validate (PyPI) checks built-in kinds against the Kubernetes schemas in --strict mode
(unknown fields are errors). It has no schemas for CRDs (ServiceMonitor, PrometheusRule, KEDA's
ScaledObject) and only warns: for those the test accepts exactly that warning, and checks by
hand what matters (what they select, which port, which rules).
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import MODEL, ROOT, running_host

DEPLOY = ROOT / "deploy"
MANIFESTS = [DEPLOY / "kubernetes.yaml", DEPLOY / "kubernetes-monitoring.yaml", DEPLOY / "kubernetes-keda.yaml"]
# Stated in deploy/kubernetes.yaml and the README; the preStop `sleep` action needs 1.30.
SUPPORTED = ["1.30", "1.31", "1.32", "1.33", "1.34", "1.35"]
CRDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
VALIDATE = Path(sys.executable).with_name("kubernetes-validate")


def documents():
    docs = []
    for path in MANIFESTS:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def one(kind):
    found = [d for d in documents() if d["kind"] == kind]
    assert len(found) == 1, f"one {kind}"
    return found[0]


def validate(paths, version):
    return subprocess.run(
        [str(VALIDATE), "--strict", "-k", version, *map(str, paths)],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_manifest_passes_kubernetes_validate_strict(version):
    out = validate(MANIFESTS, version)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = (out.stdout + out.stderr).splitlines()
    for line in lines:
        if line.startswith("WARN"):
            kind = re.search(r"schema for kind (\w+)", line)
            assert kind and kind.group(1) in CRDS, line
        else:
            assert line.startswith("INFO") and " passed for resource " in line, line
    passed = sum(" passed for resource " in line for line in lines)
    assert passed == len([d for d in documents() if d["kind"] not in CRDS])


def test_strict_validation_catches_a_misspelled_field(tmp_path):
    """The check above can fail: a field Kubernetes does not know is an error in --strict."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((DEPLOY / "kubernetes.yaml").read_text().replace("failureThreshold: 2", "failureTreshold: 2"))
    out = validate([bad], SUPPORTED[-1])
    assert out.returncode != 0, out.stdout


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert m, duration
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def test_the_deployment_drains_before_it_is_killed_and_probes_what_it_should():
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["command"] == ["/wasm-host"], "an explicit command"
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    graceful = seconds(env["WASM_HOST_GRACEFUL_TIMEOUT"])
    assert pre_stop >= 3, "the Service drops the pod before TERM"
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["failureThreshold"] >= 2, "one slow probe is not an outage"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {p["name"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_the_parts_select_each_other():
    deployment, service = one("Deployment"), one("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selects = lambda selector: all(labels.get(k) == v for k, v in selector.items())  # noqa: E731
    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(service["spec"]["selector"])
    assert selects(one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports

    monitor = one("ServiceMonitor")
    assert all(service["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"

    hpa = one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "wasm_host_instance_busy_ratio"
    adapter = yaml.safe_load(one("ConfigMap")["data"]["config.yaml"])
    assert adapter["rules"][0]["name"]["as"] == "wasm_host_instance_busy_ratio"
    scaled = one("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "wasm_host_instance_busy_seconds_total" in scaled["spec"]["triggers"][0]["metadata"]["query"]

    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    assert one("PrometheusRule")["spec"]["groups"] == rules["groups"], "the same rules in both places"


def test_the_prometheus_rules_pass_promtool():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make tools` installs it"
    for args in (["check", "rules", "rules.yml"], ["test", "rules", "rules.test.yml"]):
        out = subprocess.run([promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_the_deployment_command_line_starts_a_host_whose_probes_answer(tmp_path):
    """The container's own arguments and environment, on loopback with a scratch repository."""
    (container,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    repository = tmp_path / "models" / "digits" / "1"
    repository.mkdir(parents=True)
    shutil.copy(MODEL, repository / "model.wasm")
    args = list(container["args"])
    # `serve` is the default command; the suite's helper puts its --bind first, before it.
    assert args.pop(0) == "serve"
    bind = args.index("--bind")
    del args[bind:bind + 2]  # the suite binds 127.0.0.1:0
    args[args.index("/models")] = str(tmp_path / "models")
    env = {e["name"]: e["value"] for e in container["env"]}
    env["WASM_HOST_CACHE_DIR"] = str(tmp_path / "cache")
    with running_host(args, env) as addr:
        import urllib.request

        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = container[probe]["httpGet"]["path"]
            with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as response:
                assert response.status == 200, probe
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert "wasm_host_instance_busy_seconds_total" in text
