"""docker-compose.yml and the Kubernetes manifests, checked by real validators and against the code's settings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.common.decode_path import PIXELS_ENSEMBLE
from services.common.settings import KafkaSettings, Topics
from services.console.settings import ConsoleSettings
from services.gateway.settings import GatewaySettings
from services.preprocessing.settings import PreprocessingSettings
from services.results.settings import ResultsSettings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SETTINGS = {"KAFKA_": KafkaSettings, "GATEWAY_": GatewaySettings, "PREPROCESSING_": PreprocessingSettings,
            "RESULTS_": ResultsSettings, "CONSOLE_": ConsoleSettings}


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (it comes with the test dependencies in requirements.lock)")
    return found


def assert_real_settings(names) -> None:
    """Every variable our services are given must be a settings field of the service it is meant for."""
    for name in names:
        prefix = next((p for p in SETTINGS if name.startswith(p)), None)
        if prefix is None:
            continue  # not ours (e.g. a Kafka or PostgreSQL image's own variable)
        field = name.removeprefix(prefix).lower()
        assert field in SETTINGS[prefix].model_fields or (prefix == "KAFKA_" and field == "topic_partitions"), name


def test_compose_file_follows_the_compose_specification():
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(ROOT / "docker-compose.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_builds_every_service_and_sets_only_real_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("gateway", "preprocessing", "results"):
        assert (ROOT / services[name]["build"]["dockerfile"]).exists()
        assert "health_probe" in " ".join(services[name]["healthcheck"]["test"])
        assert_real_settings(services[name]["environment"])
    console = services["console"]
    assert (ROOT / console["build"]["dockerfile"]).exists() and "/healthz" in " ".join(console["healthcheck"]["test"])
    assert_real_settings(console["environment"])
    assert "console=" in services["results"]["environment"]["RESULTS_API_KEYS"]  # the console's key at results
    topics_created = services["kafka-topics"]["command"][0]
    for topic in Topics().model_dump().values():
        name = topic.removeprefix("product-classification.").removesuffix(".v1")
        assert name in topics_created
    assert services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_triton_loads_and_waits_for_every_served_model():
    """Explicit model control loads only what is named: every CNN in triton_models/ must be named and checked, and
    the CPU path's pixels_ensemble (the GPU decode path's photo_ensemble is a deployment choice, loaded by hand)."""
    triton = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]
    served = {config.parent.name for config in (ROOT / "triton_models").glob("*/config.pbtxt")
              if (config.parent / "labels.txt").exists()}  # the classifiers (the decode path's steps have none)
    assert {"efficientnet_lite0", "efficientnet_lite1", "resnet50", "inception_v3"} <= served
    loaded = {part.removeprefix("--load-model=") for part in triton["command"] if part.startswith("--load-model=")}
    assert loaded == served | {PIXELS_ENSEMBLE}
    assert all(f"/v2/models/{name}/ready" in triton["healthcheck"]["test"][1] for name in loaded)


def test_served_classifiers_run_on_tensorrt_in_fp16_with_one_profile_and_a_mounted_engine_cache(tmp_path):
    """Each committed config is what the export writes; TensorRT's one optimisation profile spans every batch the
    dynamic batcher can form (no engine rebuilt at run time); its engine cache is a writable volume in both
    deployments; and the local Python-backend twins drop the accelerator (TensorRT is the GPU Triton's)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from services.localstack.triton_cpu import build_python_repository
    from services.trainer.triton_export import TRT_ENGINE_CACHE, production_config

    classifiers = []
    for path in sorted((ROOT / "triton_models").glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        if config.platform != "onnxruntime_onnx":
            continue
        classifiers.append(config.name)
        size, batch = config.input[0].dims[0], config.max_batch_size
        assert path.read_text() == production_config(config.name, size, config.output[0].dims[0], batch)
        [accelerator] = config.optimization.execution_accelerators.gpu_execution_accelerator
        parameters = dict(accelerator.parameters)
        assert accelerator.name == "tensorrt" and parameters["precision_mode"] == "FP16"
        shape = f"{size}x{size}x3"
        assert parameters["trt_profile_min_shapes"] == f"{config.input[0].name}:1x{shape}"
        assert parameters["trt_profile_max_shapes"] == f"{config.input[0].name}:{batch}x{shape}"
        assert max(config.dynamic_batching.preferred_batch_size) <= batch
        assert parameters["trt_engine_cache_enable"] == "1" and parameters["trt_engine_cache_path"] == TRT_ENGINE_CACHE
        (tmp_path / "production" / config.name / "1").mkdir(parents=True)
        (tmp_path / "production" / config.name / "config.pbtxt").write_text(path.read_text())
        (tmp_path / "production" / config.name / "1" / "model.onnx").write_bytes(b"")
    assert len(classifiers) == 4
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert any(volume.split(":")[1] == TRT_ENGINE_CACHE and volume.split(":")[0] in compose["volumes"]
               for volume in compose["services"]["triton"]["volumes"])
    [triton] = [doc for doc in rendered("overlays/production") if doc["kind"] == "Deployment"
                and doc["metadata"]["name"].endswith("triton")]
    mounts = triton["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(m["mountPath"] == TRT_ENGINE_CACHE and not m.get("readOnly") for m in mounts)
    twins, _ = build_python_repository(tmp_path / "production", tmp_path / "twins", Path(__file__),
                                       Path(__file__), model_config_pb2.ModelInstanceGroup.KIND_CPU)
    assert sorted(twins) == classifiers
    for name in twins:
        twin = text_format.Parse((tmp_path / "twins" / name / "config.pbtxt").read_text(),
                                 model_config_pb2.ModelConfig())
        assert twin.backend == "python" and not twin.HasField("optimization")


def rendered(overlay: str) -> list[dict]:
    output = subprocess.run([tool("kubectl"), "kustomize", str(ROOT / "deploy" / overlay)], check=True,
                            capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


@pytest.mark.parametrize("overlay", ["base", "overlays/production", "overlays/production-colocated-workers"])
def test_manifests_validate_against_the_kubernetes_schemas(overlay):
    documents = rendered(overlay)
    scaled_object_schema = json.loads((ROOT / "tests" / "schemas" / "keda-scaledobject.schema.json").read_text())
    kinds = set()
    for document in documents:
        kinds.add(document["kind"])
        if document["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(document, scaled_object_schema)
        else:
            kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "ScaledObject", "Job"} <= kinds


def test_manifests_are_consistent_with_the_services():
    documents = rendered("overlays/production")
    by_kind: dict[str, dict[str, dict]] = {}
    for document in documents:
        by_kind.setdefault(document["kind"], {})[document["metadata"]["name"]] = document
    config = by_kind["ConfigMap"]["product-classification-config"]["data"]
    assert_real_settings(config)
    assert_real_settings(by_kind["Secret"]["product-classification-secrets"]["stringData"])
    partitions = int(config["KAFKA_TOPIC_PARTITIONS"])
    for name, scaled in by_kind["ScaledObject"].items():
        assert scaled["spec"]["maxReplicaCount"] <= partitions, f"{name} would scale past the partitions"
        assert scaled["spec"]["scaleTargetRef"]["name"] in by_kind["Deployment"]
        trigger = scaled["spec"]["triggers"][0]["metadata"]
        settings = {"preprocessing": PreprocessingSettings, "results": ResultsSettings}[name]
        assert trigger["consumerGroup"] == settings.model_fields["consumer_group"].default
        assert trigger["topic"] in Topics().model_dump().values()
    for name in ("gateway", "preprocessing", "results"):
        container = by_kind["Deployment"][name]["spec"]["template"]["spec"]["containers"][0]
        port = container["ports"][0]["containerPort"]
        assert container["readinessProbe"]["grpc"]["port"] == port
        assert_real_settings(variable["name"] for variable in container["env"])
        assert by_kind["PodDisruptionBudget"][name]
    console = by_kind["Deployment"]["console"]["spec"]["template"]["spec"]["containers"][0]
    assert console["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert_real_settings(variable["name"] for variable in console["env"])
    assert by_kind["PodDisruptionBudget"]["console"] and by_kind["Secret"]["console-operators"]
    secrets = by_kind["Secret"]["product-classification-secrets"]["stringData"]
    console_key = secrets["CONSOLE_RESULTS_API_KEY"]
    assert f"console={console_key}" in secrets["RESULTS_API_KEYS"]  # results knows the console by its key
    triton = by_kind["Deployment"]["triton"]["spec"]["template"]["spec"]["containers"][0]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert by_kind["HorizontalPodAutoscaler"]["gateway"]["spec"]["scaleTargetRef"]["name"] == "gateway"


def test_colocated_workers_share_tritons_pod_network_and_shared_memory():
    """The overlay's workers reach Triton in their pod and map the same /dev/shm; each has ports of its own; they run
    the production image as the lag-scaled workers do; with them, no consumer of the group can sit idle."""
    documents = rendered("overlays/production-colocated-workers")
    by_kind: dict[str, dict[str, dict]] = {}
    for document in documents:
        by_kind.setdefault(document["kind"], {})[document["metadata"]["name"]] = document
    pod = by_kind["Deployment"]["triton"]["spec"]["template"]["spec"]
    triton, *workers = pod["containers"]
    assert triton["name"] == "triton" and [w["name"] for w in workers] == ["preprocessing-1", "preprocessing-2"]
    triton_grpc = next(p["containerPort"] for p in triton["ports"] if p["name"] == "grpc")
    [triton_shm] = [m["name"] for m in triton["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert pod_volume(pod, triton_shm)["emptyDir"]["medium"] == "Memory"
    ports = [p["containerPort"] for c in pod["containers"] for p in c["ports"]]
    assert len(ports) == len(set(ports)), "two containers of one pod would listen on one port"
    lag_scaled = by_kind["Deployment"]["preprocessing"]["spec"]["template"]["spec"]["containers"][0]
    for worker in workers:
        env = {v["name"]: v["value"] for v in worker["env"]}
        assert_real_settings(env)
        assert env["PREPROCESSING_TRITON_URL"] == f"127.0.0.1:{triton_grpc}"
        assert env["PREPROCESSING_TRITON_SHARED_MEMORY"] == "true"
        grpc_port = int(env["PREPROCESSING_GRPC_ADDRESS"].rsplit(":", 1)[1])
        assert {p["containerPort"] for p in worker["ports"]} == {grpc_port, int(env["PREPROCESSING_METRICS_PORT"])}
        assert worker["readinessProbe"]["grpc"]["port"] == grpc_port == worker["startupProbe"]["grpc"]["port"]
        assert any(m["name"] == triton_shm and m["mountPath"] == "/dev/shm" for m in worker["volumeMounts"])
        assert worker["image"] == lag_scaled["image"] and worker["envFrom"] == lag_scaled["envFrom"]
        assert worker["securityContext"]["runAsNonRoot"] and worker["securityContext"]["readOnlyRootFilesystem"]
        assert pod["terminationGracePeriodSeconds"] > float(env["PREPROCESSING_SHUTDOWN_GRACE_S"]) + 15
    partitions = int(by_kind["ConfigMap"]["product-classification-config"]["data"]["KAFKA_TOPIC_PARTITIONS"])
    replicas = by_kind["Deployment"]["triton"]["spec"]["replicas"]
    assert by_kind["ScaledObject"]["preprocessing"]["spec"]["maxReplicaCount"] + replicas * len(workers) <= partitions


def pod_volume(pod: dict, name: str) -> dict:
    return next(v for v in pod["volumes"] if v["name"] == name)


@pytest.mark.parametrize("service", ["console", "gateway", "preprocessing", "results", "trainer"])
def test_each_image_carries_every_package_its_service_imports(service):
    """A service's Dockerfile copies services/common and its own package; an import of any other services.* package
    (even inside a function, on a path the tests here may not take) would fail only in that image."""
    import ast
    import re

    root = Path(__file__).resolve().parents[2]
    dockerfile = (root / "services" / service / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*services/(\w+)", dockerfile, flags=re.MULTILINE))
    if re.search(r"^COPY\s+(?:--\S+\s+)*services/?\s", dockerfile, flags=re.MULTILINE):  # the whole tree
        copied |= {p.name for p in (root / "services").iterdir() if p.is_dir()}
    imported: dict[str, str] = {}
    for source in (root / "services" / service).rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "services" and len(parts) > 1:
                    imported.setdefault(parts[1], str(source.relative_to(root)))
    missing = {package: where for package, where in imported.items() if package not in copied}
    assert not missing, f"services/{service}/Dockerfile does not copy what these files import: {missing}"


# -- who may connect to what: the NetworkPolicies, read as Kubernetes reads them

OUTSIDE = "outside the cluster"
ELSEWHERE = "a pod in another namespace"


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are read here"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def _peer_admits(peer: dict, source) -> bool:
    if source == OUTSIDE:
        return False  # no ipBlock peers are used: only the cluster's pods are named
    if "namespaceSelector" in peer:
        assert peer["namespaceSelector"] == {} and "podSelector" not in peer
        return True  # any pod in any namespace
    return source != ELSEWHERE and _selects(peer["podSelector"], source)


def reachable(policies: list[dict], pod_labels: dict, port_name: str, source) -> bool:
    """Whether a connection from source (a pod's labels in this namespace, ELSEWHERE or OUTSIDE) to the named port of
    a pod with pod_labels gets in: a pod no ingress policy selects takes anything; otherwise some rule of a policy
    selecting it must admit both the source (no `from`: any) and the port (no `ports`: any)."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], pod_labels)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports is not None and not any(p["port"] == port_name for p in ports):
                continue
            peers = rule.get("from")
            if peers is None or any(_peer_admits(peer, source) for peer in peers):
                return True
    return False


@pytest.mark.parametrize("overlay", ["overlays/production", "overlays/production-colocated-workers"])
def test_only_the_callers_each_port_serves_can_reach_it(overlay):
    documents = rendered(overlay)
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    assert all(d["spec"]["policyTypes"] == ["Ingress"] for d in policies)
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in documents if d["kind"] in ("Deployment", "Job")}
    labels = {name: pod["metadata"].get("labels", {}) for name, pod in pods.items()}
    sources = {OUTSIDE: OUTSIDE, ELSEWHERE: ELSEWHERE, **labels}
    # which callers each served port is for; every other (source, port) must be refused
    callers = {("gateway", "grpc"): set(sources), ("console", "http"): set(sources),
               ("preprocessing", "grpc"): {"gateway"}, ("results", "grpc"): {"gateway", "console"},
               ("triton", "grpc"): {"preprocessing"}, ("triton", "http"): {"preprocessing"}}
    ports_seen = set()
    for name, pod in pods.items():
        for container in pod["spec"]["containers"]:
            for port in container.get("ports", []):
                ports_seen.add((name, port["name"]))
                if port["name"].endswith("metrics"):  # Prometheus, wherever it runs in the cluster
                    wanted = set(sources) - {OUTSIDE}
                else:
                    wanted = callers.get((name, port["name"]), set())
                admitted = {s for s, source in sources.items()
                            if reachable(policies, labels[name], port["name"], source)}
                assert admitted == wanted, f"{name}'s {port['name']} port: {sorted(admitted)} can reach it"
    assert set(callers) <= ports_seen, "a policy names a port no pod serves"


def test_triton_answers_only_health_without_the_token_preprocessing_sends():
    """Both deployments start Triton as the local stack does (tests/integration/test_triton_access.py): every API
    but health restricted to calls carrying the token, and give preprocessing the same token."""
    from services.preprocessing.triton_models import TRITON_ACCESS_KEY, TRITON_RESTRICTED

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    token = "${TRITON_ACCESS_TOKEN:?set TRITON_ACCESS_TOKEN"
    for flag in ("--grpc-restricted-protocol", "--http-restricted-api"):
        [value] = [part.split("=", 1)[1] for part in compose["triton"]["command"] if part.startswith(flag + "=")]
        assert value.startswith(f"{TRITON_RESTRICTED}:{TRITON_ACCESS_KEY}={token}")
    assert "health" not in TRITON_RESTRICTED.split(",")  # the healthchecks and probes
    assert compose["preprocessing"]["environment"]["PREPROCESSING_TRITON_ACCESS_TOKEN"].startswith(token)
    for overlay in ("overlays/production", "overlays/production-colocated-workers"):
        documents = rendered(overlay)
        [triton] = [d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "triton"]
        [secret] = [d for d in documents if d["kind"] == "Secret"
                    and d["metadata"]["name"] == "product-classification-secrets"]
        server = triton["spec"]["template"]["spec"]["containers"][0]
        for flag in ("--grpc-restricted-protocol", "--http-restricted-api"):
            assert f"{flag}={TRITON_RESTRICTED}:{TRITON_ACCESS_KEY}=$(TRITON_ACCESS_TOKEN)" in server["args"]
        [variable] = [v for v in server["env"] if v["name"] == "TRITON_ACCESS_TOKEN"]
        reference = variable["valueFrom"]["secretKeyRef"]
        assert reference["name"] == secret["metadata"]["name"] and reference["key"] in secret["stringData"]
        assert reference["key"] == "PREPROCESSING_TRITON_ACCESS_TOKEN"  # what preprocessing reads, from the Secret
        workers = [d["spec"]["template"]["spec"]["containers"][0] for d in documents
                   if d["kind"] == "Deployment" and d["metadata"]["name"] == "preprocessing"]
        workers += triton["spec"]["template"]["spec"]["containers"][1:]
        for worker in workers:
            assert {"secretRef": {"name": secret["metadata"]["name"]}} in worker["envFrom"]


def compose_calls(services: dict) -> set[tuple[str, str]]:
    """(caller, called) for every address of another service that a service is given (its environment, its command)
    and every target Prometheus scrapes."""
    import re

    calls = set()
    for name, service in services.items():
        texts = [str(v) for v in (service.get("environment") or {}).values()]
        texts += [str(part) for part in (service.get("command") or []) + (service.get("entrypoint") or [])]
        for text in texts:
            for host in re.findall(r"(?:^|[/@\s])([a-z][a-z-]*):\d+", text):
                if host in services and host != name:
                    calls.add((name, host))
    scraped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    for job in scraped["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            calls.add(("prometheus", target.split(":")[0]))
    return calls


def test_compose_services_share_a_network_only_with_what_they_call_or_what_calls_them():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services, networks = compose["services"], compose["networks"]
    member = {name: set(service.get("networks") or ["default"]) for name, service in services.items()}
    calls = compose_calls(services)
    assert {("gateway", "preprocessing"), ("gateway", "results"), ("console", "results"), ("results", "postgres"),
            ("preprocessing", "triton"), ("preprocessing", "kafka"), ("prometheus", "triton")} <= calls
    for caller, called in calls:
        assert member[caller] & member[called], f"{caller} cannot reach {called}"
    for network, settings in networks.items():
        inside = {name for name, nets in member.items() if network in nets}
        if network in ("edge", "egress"):
            assert not (settings or {}).get("internal")  # published ports and the photo fetches need a way out
            continue
        assert (settings or {}).get("internal"), f"{network} must have no way out of the host"
        hubs = [hub for hub in inside if all((m, hub) in calls or (hub, m) in calls for m in inside - {hub})]
        assert hubs, f"{network} joins services that neither call one of them nor are called by it: {sorted(inside)}"
    # what a compromised console reaches (besides the other published services on edge): the result service only
    reachable = {other for other, nets in member.items() if other != "console" and nets & member["console"] - {"edge"}}
    assert reachable == {"results"}
    assert [name for name, nets in member.items() if "egress" in nets] == ["preprocessing"]
    assert not member["triton"] & (member["kafka"] | member["postgres"] | member["console"])
