"""The shipped deployment files stay consistent with the code and with each other.

Kubernetes manifests, the kustomization, the Helm chart at the YAML level (its rendering is
tests/integration/test_helm.py), the Dockerfile, the systemd unit and the logrotate file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from avx_twisted._version import __version__
from avx_twisted.config import GatewayConfig

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/kubernetes"
CHART = REPO / "deploy/helm/avx-gateway"


def endpoint_port(description: str) -> int:
    """The port of a Twisted endpoint string ("tcp:8081:interface=0.0.0.0" -> 8081)."""
    kind, *args = description.split(":")
    assert kind in ("tcp", "tcp6", "ssl"), description
    for arg in args:
        if arg.startswith("port="):
            return int(arg[5:])
    return int(args[0])


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def named_port(c: dict[str, Any], port: int | str) -> int:
    """A probe's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in c["ports"] if p["name"] == port)


def pre_stop_seconds(c: dict[str, Any]) -> int:
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/sleep", command  # the image has /bin/sleep, and no shell needed
    return int(command[1])


def check_pod_against_config(
    test: SynchronousTestCase, deployment: dict[str, Any], config: GatewayConfig
) -> None:
    """Ports, probes and the stop timeline of a Deployment agree with the gateway config."""
    pod = deployment["spec"]["template"]
    c = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    test.assertEqual(ports["http"], config.server.port)
    test.assertTrue(config.health.listen, "probes belong on the private health listener")
    test.assertTrue(config.metrics.listen, "metrics belong on their own listener")
    test.assertEqual(ports["health"], endpoint_port(config.health.listen))
    test.assertEqual(ports["metrics"], endpoint_port(config.metrics.listen))
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    test.assertEqual(live["path"], config.health.liveness_path)
    test.assertEqual(ready["path"], config.health.readiness_path)
    test.assertEqual(named_port(c, live["port"]), endpoint_port(config.health.listen))
    test.assertEqual(named_port(c, ready["port"]), endpoint_port(config.health.listen))
    annotations = pod["metadata"]["annotations"]
    test.assertEqual(annotations["prometheus.io/scrape"], "true")
    test.assertEqual(int(annotations["prometheus.io/port"]), endpoint_port(config.metrics.listen))
    test.assertEqual(annotations["prometheus.io/path"], config.metrics.path)
    # preStop, then SIGTERM: shutdown_delay_ms of serving with /ready at 503, then the drain.
    test.assertGreater(config.server.shutdown_delay_ms, 0)
    needed = (
        pre_stop_seconds(c)
        + config.server.shutdown_delay_ms / 1000
        + config.server.drain_timeout_ms / 1000
    )
    test.assertGreater(pod["spec"]["terminationGracePeriodSeconds"], needed)
    test.assertEqual(pod["spec"]["securityContext"]["runAsUser"], 10001)
    test.assertTrue(pod["spec"]["securityContext"]["runAsNonRoot"])
    test.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
    test.assertEqual(c["args"], ["run", "--config", "/etc/avx-gateway/gateway.toml"])


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``avx-gateway ARGS`` (the console script's module, so no install is needed)."""
    return subprocess.run(
        [sys.executable, "-m", "avx_twisted.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


class KubernetesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.kustomization = load_yaml(K8S / "kustomization.yaml")
        self.deployment = load_yaml(K8S / "deployment.yaml")
        self.config = GatewayConfig.load(str(K8S / "gateway.toml"))

    def test_kustomization_generates_the_configmap_from_the_config_file(self) -> None:
        k = self.kustomization
        self.assertEqual(k["kind"], "Kustomization")
        for resource in k["resources"]:
            self.assertTrue((K8S / resource).is_file(), resource)
        (generator,) = k["configMapGenerator"]
        self.assertEqual(generator["files"], ["gateway.toml"])
        # A hash suffix (the default) makes a config change roll the pods.
        self.assertFalse(generator.get("options", {}).get("disableNameSuffixHash", False))
        volumes = self.deployment["spec"]["template"]["spec"]["volumes"]
        config_volume = next(v for v in volumes if v["name"] == "config")
        self.assertEqual(config_volume["configMap"]["name"], generator["name"])
        # Every manifest in the directory is a resource of the kustomization (none forgotten).
        manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
        self.assertEqual(manifests, set(k["resources"]))

    def test_the_config_is_a_valid_gateway_config_matching_the_deployment(self) -> None:
        self.assertEqual(self.config.server.workers, 1)
        check_pod_against_config(self, self.deployment, self.config)

    def test_the_config_passes_every_start_up_check(self) -> None:
        out = cli("check", "--config", str(K8S / "gateway.toml"))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("OK", out.stdout)

    def test_the_image_is_pinned_to_the_gateway_version(self) -> None:
        image = container(self.deployment)["image"]
        self.assertEqual(image, f"avx-gateway:{__version__}")
        (override,) = self.kustomization["images"]
        self.assertEqual(override["name"], "avx-gateway")
        self.assertEqual(override["newTag"], __version__)

    def test_the_service_exposes_the_data_plane_only(self) -> None:
        service = load_yaml(K8S / "service.yaml")
        self.assertEqual([p["targetPort"] for p in service["spec"]["ports"]], ["http"])
        pdb = load_yaml(K8S / "pdb.yaml")
        self.assertLess(pdb["spec"]["minAvailable"], self.deployment["spec"]["replicas"])
        self.assertEqual(pdb["spec"]["selector"], self.deployment["spec"]["selector"])

    def test_kubectl_kustomize_renders_a_hashed_configmap(self) -> None:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise SkipTest("kubectl is not installed (kustomize is built into it)")
        out = subprocess.run(
            [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        docs = {d["kind"]: d for d in yaml.safe_load_all(out.stdout)}
        name = docs["ConfigMap"]["metadata"]["name"]
        self.assertRegex(name, r"^avx-gateway-[a-z0-9]{10}$")
        pod = docs["Deployment"]["spec"]["template"]["spec"]
        self.assertIn({"name": "config", "configMap": {"name": name}}, pod["volumes"])
        self.assertEqual(
            GatewayConfig.from_toml(docs["ConfigMap"]["data"]["gateway.toml"]),
            GatewayConfig.from_toml((K8S / "gateway.toml").read_text()),
        )


def values_paths(template_text: str) -> set[tuple[str, ...]]:
    return {tuple(m.split(".")[2:]) for m in re.findall(r"\.Values(?:\.\w+)+", template_text)}


def expand_default_config(values: dict[str, Any], namespace: str = "prod") -> str:
    """The chart's `tpl` of values.config, for the only forms the default config uses."""

    def lookup(match: re.Match[str]) -> str:
        expr = match.group(1)
        if expr == ".Release.Namespace":
            return namespace
        node: Any = values
        for part in expr.split(".")[2:]:
            node = node[part]
        return str(node)

    text = re.sub(
        r"\{\{\s*(\.Values(?:\.\w+)+|\.Release\.Namespace)\s*\}\}", lookup, values["config"]
    )
    assert "{{" not in text, text
    return text


class HelmChartFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.chart = load_yaml(CHART / "Chart.yaml")
        self.values = load_yaml(CHART / "values.yaml")

    def test_chart_yaml(self) -> None:
        self.assertEqual(self.chart["apiVersion"], "v2")
        self.assertEqual(self.chart["name"], "avx-gateway")
        self.assertEqual(self.chart["appVersion"], __version__)
        self.assertRegex(self.chart["version"], r"^\d+\.\d+\.\d+$")

    def test_templates_only_reference_values_that_exist(self) -> None:
        templates = sorted((CHART / "templates").iterdir())
        self.assertTrue(templates)
        config_text = self.values["config"]
        for path in [*templates, None]:
            text = config_text if path is None else path.read_text()
            for keys in values_paths(text):
                node: Any = self.values
                for key in keys:
                    self.assertIsInstance(node, dict, f"{path}: .Values.{'.'.join(keys)}")
                    self.assertIn(
                        key, node, f"{path}: .Values.{'.'.join(keys)} is not in values.yaml"
                    )
                    node = node[key]

    def test_the_default_config_is_valid_and_matches_the_probes_and_ports(self) -> None:
        config = GatewayConfig.from_toml(expand_default_config(self.values), source="values.yaml")
        v = self.values
        self.assertEqual(config.server.port, v["ports"]["http"])
        self.assertEqual(endpoint_port(config.health.listen), v["ports"]["health"])
        self.assertEqual(endpoint_port(config.metrics.listen), v["ports"]["metrics"])
        self.assertEqual(
            v["livenessProbe"]["httpGet"], {"path": config.health.liveness_path, "port": "health"}
        )
        self.assertEqual(
            v["readinessProbe"]["httpGet"], {"path": config.health.readiness_path, "port": "health"}
        )
        self.assertEqual(config.metrics.path, v["metrics"]["path"])
        needed = (
            v["preStopSleepSeconds"]
            + config.server.shutdown_delay_ms / 1000
            + config.server.drain_timeout_ms / 1000
        )
        self.assertGreater(v["terminationGracePeriodSeconds"], needed)

    def test_defaults(self) -> None:
        v = self.values
        self.assertIn(v["image"]["tag"], ("", __version__))  # "" is the appVersion
        self.assertFalse(v["autoscaling"]["enabled"])
        self.assertFalse(v["metrics"]["serviceMonitor"]["enabled"])
        self.assertTrue(v["podDisruptionBudget"]["enabled"])
        self.assertEqual(v["podSecurityContext"]["runAsUser"], 10001)
        self.assertEqual(v["env"], [])
        self.assertEqual(v["envFrom"], [])

    def test_the_schema_is_json_naming_real_values(self) -> None:
        import json

        schema = json.loads((CHART / "values.schema.json").read_text())
        self.assertLessEqual(set(schema["properties"]), set(self.values))
        self.assertLessEqual(set(schema["required"]), set(self.values))


class DockerfileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.text = (REPO / "Dockerfile").read_text()
        # Instructions, continuation lines joined, comments dropped.
        joined = re.sub(r"\\\n", " ", self.text)
        self.instructions = [
            line.strip()
            for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]

    def instruction(self, name: str) -> list[str]:
        return [i for i in self.instructions if i.split(None, 1)[0] == name]

    def test_entrypoint_is_the_cli_running_the_mounted_config(self) -> None:
        self.assertEqual(self.instruction("ENTRYPOINT"), ['ENTRYPOINT ["avx-gateway"]'])
        self.assertEqual(
            self.instruction("CMD"), ['CMD ["run", "--config", "/etc/avx-gateway/gateway.toml"]']
        )

    def test_no_placeholder_config_is_baked_in(self) -> None:
        # Without a mounted config `run` refuses to start; `demo` is the way to try it out.
        for copy in self.instruction("COPY"):
            self.assertNotIn("gateway.toml", copy)
            self.assertNotIn("config/", copy)
        self.assertIn("AVX_DEMO_HOST=0.0.0.0", self.text)

    def test_without_a_mounted_config_run_exits_2_naming_the_file(self) -> None:
        # What `docker run IMAGE` does with nothing mounted (the CMD's path does not exist here).
        missing = "/nonexistent/avx-gateway/gateway.toml"
        self.assertFalse(os.path.exists(missing))
        out = cli("run", "--config", missing)
        self.assertEqual(out.returncode, 2)
        self.assertIn(missing, out.stderr)
        self.assertIn("cannot read file", out.stderr)

    def test_base_image_and_version_are_pinned(self) -> None:
        (arg,) = [i for i in self.instruction("ARG") if i.startswith("ARG PYTHON_IMAGE=")]
        self.assertRegex(arg, r"^ARG PYTHON_IMAGE=python:3\.\d+\.\d+-slim-bookworm$")
        for line in self.instruction("FROM"):
            self.assertRegex(line, r"^FROM \$\{PYTHON_IMAGE\}( AS \w+)?$")
        self.assertIn(f"ARG VERSION={__version__}", self.instructions)
        self.assertIn('org.opencontainers.image.version="${VERSION}"', self.text)
        self.assertNotIn(":latest", self.text)

    def test_runs_as_a_non_root_user_with_a_healthcheck(self) -> None:
        self.assertEqual(self.instruction("USER"), ["USER 10001:10001"])
        (check,) = self.instruction("HEALTHCHECK")
        self.assertIn("/opt/avx-gateway/healthcheck.py", check)
        # The probe script tries the health listener first, then the data plane (the demo).
        self.assertIn("http://127.0.0.1:8081/healthz http://127.0.0.1:8080/healthz", self.text)
        self.assertEqual(self.instruction("STOPSIGNAL"), ["STOPSIGNAL SIGTERM"])

    def test_dockerignore_keeps_the_context_small_but_buildable(self) -> None:
        ignored = {
            line.strip()
            for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        }
        for needed in ("setup.cfg", "pyproject.toml", "README.md", "avx_twisted", "twisted"):
            self.assertNotIn(needed, ignored)
        for junk in (".git", ".venv", "tests", "**/__pycache__"):
            self.assertIn(junk, ignored)


def unit_lines(path: Path) -> dict[str, list[str]]:
    """A systemd unit's settings: key -> values in order (comments dropped)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


class SystemdAndLogrotateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.unit = unit_lines(REPO / "systemd/avx-gateway.service")

    def test_the_unit_checks_then_runs_through_the_cli(self) -> None:
        cli = "/opt/avx-gateway/venv/bin/avx-gateway"
        check = f"{cli} check --config /etc/avx-gateway/gateway.toml"
        self.assertEqual(self.unit["ExecStartPre"], [check])
        self.assertEqual(
            self.unit["ExecStart"], [f"{cli} run --config /etc/avx-gateway/gateway.toml"]
        )
        self.assertEqual(self.unit["ExecReload"], [check, "/bin/kill -HUP $MAINPID"])
        self.assertEqual(self.unit["KillSignal"], ["SIGTERM"])

    def test_the_stop_timeout_covers_the_default_drain(self) -> None:
        config = GatewayConfig.from_toml(
            '[[routes]]\npath = "/*"\n[routes.upstream]\nurls = ["http://127.0.0.1:1"]\n'
        )
        (timeout,) = self.unit["TimeoutStopSec"]
        needed = (config.server.shutdown_delay_ms + config.server.drain_timeout_ms) / 1000
        self.assertGreater(int(timeout.rstrip("s")), needed)

    def test_the_hardening_stays(self) -> None:
        for key, value in {
            "DynamicUser": "yes",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "CapabilityBoundingSet": "",
            "SystemCallFilter": "@system-service",
            "LogsDirectory": "avx-gateway",
        }.items():
            self.assertEqual(self.unit.get(key), [value], key)

    def test_logrotate_renames_then_signals_usr1_to_the_main_pid(self) -> None:
        text = (REPO / "deploy/logrotate/avx-gateway").read_text()
        directives = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        self.assertTrue(directives[0].startswith("/var/log/avx-gateway/"), directives[0])
        self.assertNotIn("copytruncate", directives)
        self.assertIn("nocreate", directives)
        self.assertIn("delaycompress", directives)
        post = directives[directives.index("postrotate") + 1 : directives.index("endscript")]
        self.assertEqual(len(post), 1)
        self.assertIn("systemctl kill -s USR1 --kill-who=main avx-gateway.service", post[0])
        # The unit's LogsDirectory is where logrotate looks.
        (logs,) = self.unit["LogsDirectory"]
        self.assertTrue(directives[0].startswith(os.path.join("/var/log", logs) + "/"))

    def test_logrotate_accepts_the_file(self) -> None:
        logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
        if not os.path.exists(logrotate):
            raise SkipTest("logrotate is not installed")
        state = Path(self.mktemp())
        out = subprocess.run(
            [
                logrotate,
                "--debug",
                "--state",
                str(state),
                str(REPO / "deploy/logrotate/avx-gateway"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertNotIn("error:", out.stdout + out.stderr)
