"""The shipped deployment files stay consistent with the code and with each other.

Kubernetes manifests, the kustomization and its TLS Component, the Helm chart at the YAML level
(its rendering is tests/integration/test_helm.py), the Dockerfile, the systemd unit and the
logrotate file. Configs that name the mounted TLS Secret's files (/etc/avx/tls) are loaded with
certificates minted here (tests/support/pki.py) in their place.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from copy import deepcopy
from pathlib import Path
from typing import Any, Callable

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from avx_twisted._version import __version__
from avx_twisted.config import GatewayConfig
from tests.support.pki import PKI

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/kubernetes"
CHART = REPO / "deploy/helm/avx-gateway"
#: Where the chart and the TLS Component mount the TLS Secret (keys tls.crt, tls.key, ca.crt).
TLS_MOUNT = "/etc/avx/tls"


def mint_tls_secret(directory: Path) -> Path:
    """A directory laid out like the mounted kubernetes.io/tls Secret: a server certificate
    (``tls.crt``, ``tls.key``) and the CA for client certificates (``ca.crt``), minted."""
    pki = PKI(directory / "pki")
    secret = directory / "tls"
    secret.mkdir()
    shutil.copyfile(pki.default.cert, secret / "tls.crt")
    shutil.copyfile(pki.default.key, secret / "tls.key")
    shutil.copyfile(pki.ca.path, secret / "ca.crt")
    return secret


def temporary_directory(test: SynchronousTestCase) -> Path:
    """A directory removed after ``test`` (absolute, outside the work tree)."""
    path = Path(tempfile.mkdtemp(prefix="avx-deploy-"))
    test.addCleanup(shutil.rmtree, path, True)
    return path


def with_tls_files(text: str, secret: Path) -> str:
    """A config naming the mounted Secret's files, made to name ``secret``'s instead."""
    return text.replace(f'"{TLS_MOUNT}/', f'"{secret}/')


def tls_files(config: GatewayConfig) -> list[str]:
    """Every certificate, key and CA file the TLS listeners read."""
    files = []
    for listener in config.server.listeners:
        tls = listener.tls
        if tls is None:
            continue
        files += [tls.cert_file, tls.key_file]
        for extra in tls.certificates:
            files += [extra.cert_file, extra.key_file]
        if tls.client_ca_file:
            files.append(tls.client_ca_file)
    return files


def data_plane_ports(config: GatewayConfig) -> tuple[list[int], list[int]]:
    """The ports of the cleartext and of the TLS data-plane listeners."""
    listeners = config.server.listeners
    cleartext = [endpoint_port(e) for e in config.server.endpoints]
    cleartext += [endpoint_port(x.endpoint) for x in listeners if x.tls is None]
    return cleartext, [endpoint_port(x.endpoint) for x in listeners if x.tls is not None]


def secret_files(deployment: dict[str, Any]) -> dict[str, bool]:
    """The files the container sees from Secret volumes (plain or projected): path -> whether
    the mount is read-only. Only listed ``items`` count (a Secret's keys are not known here)."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    files = {}
    for mount in container(deployment).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        sources = volume["projected"]["sources"] if "projected" in volume else [volume]
        for source in sources:
            for item in (source.get("secret") or {}).get("items", []):
                path = os.path.join(mount["mountPath"], item["path"])
                files[path] = bool(mount.get("readOnly"))
    return files


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
    test: SynchronousTestCase,
    deployment: dict[str, Any],
    config: GatewayConfig,
    in_pod: Callable[[str], str] = lambda path: path,
) -> None:
    """Ports, probes, the stop timeline and the TLS files of a Deployment agree with the
    gateway config. ``in_pod``: where a file the config names is in the pod (for a config
    whose TLS files were replaced by minted ones)."""
    pod = deployment["spec"]["template"]
    c = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    test.assertEqual(len(ports), len(c["ports"]), "container port names are unique")
    cleartext, tls = data_plane_ports(config)
    test.assertEqual(cleartext, [ports["http"]])
    test.assertEqual(tls, [ports["https"]] if "https" in ports else [])
    mounted = secret_files(deployment)
    for path in tls_files(config):
        test.assertTrue(mounted.get(in_pod(path)), f"{in_pod(path)} is not in a read-only mount")
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


class KubernetesTlsComponentTests(SynchronousTestCase):
    """deploy/kubernetes/tls/: the base plus a TLS listener from the Secret avx-gateway-tls."""

    def setUp(self) -> None:
        self.kustomization = load_yaml(K8S / "tls/kustomization.yaml")
        self.secret = mint_tls_secret(temporary_directory(self))
        self.text = (K8S / "tls/gateway.toml").read_text()
        self.config = GatewayConfig.from_toml(with_tls_files(self.text, self.secret), source="k8s")

    def in_pod(self, path: str) -> str:
        return path.replace(str(self.secret), TLS_MOUNT)

    def test_a_component_replacing_the_config_and_patching_deployment_and_service(self) -> None:
        k = self.kustomization
        self.assertEqual(k["kind"], "Component")
        (generator,) = k["configMapGenerator"]
        (base_generator,) = load_yaml(K8S / "kustomization.yaml")["configMapGenerator"]
        self.assertEqual(generator["name"], base_generator["name"])
        self.assertEqual(generator["behavior"], "replace")
        self.assertEqual(generator["files"], ["gateway.toml"])
        patches = {patch["path"] for patch in k["patches"]}
        manifests = {p.name for p in (K8S / "tls").glob("*.yaml")} - {"kustomization.yaml"}
        self.assertEqual(patches, manifests)
        self.assertIn("#   - tls", (K8S / "kustomization.yaml").read_text())

    def test_its_config_is_the_base_config_plus_a_tls_listener(self) -> None:
        base = GatewayConfig.from_toml((K8S / "gateway.toml").read_text(), source="k8s")
        (listener,) = self.config.server.listeners
        self.assertEqual(data_plane_ports(self.config), ([base.server.port], [8443]))
        self.assertEqual(self.in_pod(listener.tls.cert_file), f"{TLS_MOUNT}/tls.crt")
        self.assertEqual(self.in_pod(listener.tls.key_file), f"{TLS_MOUNT}/tls.key")
        self.assertEqual(listener.tls.client_auth, "none")
        self.assertFalse(listener.proxy_protocol)
        server = dataclasses.replace(
            self.config.server, listen=(), listeners=(), port=base.server.port
        )
        self.assertEqual(dataclasses.replace(self.config, server=server), base)

    def test_its_config_passes_every_start_up_check(self) -> None:
        path = temporary_directory(self) / "gateway.toml"
        path.write_text(with_tls_files(self.text, self.secret))
        out = cli("check", "--config", str(path))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("OK", out.stdout)

    def test_kubectl_kustomize_renders_the_base_with_tls(self) -> None:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise SkipTest("kubectl is not installed (kustomize is built into it)")
        overlay = temporary_directory(self)
        (overlay / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "resources": [os.path.relpath(K8S, overlay)],
                    "components": [os.path.relpath(K8S / "tls", overlay)],
                }
            )
        )
        out = subprocess.run(
            [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        docs = {d["kind"]: d for d in yaml.safe_load_all(out.stdout)}
        self.assertEqual(docs["ConfigMap"]["data"]["gateway.toml"], self.text)
        deployment = docs["Deployment"]
        check_pod_against_config(self, deployment, self.config, self.in_pod)
        name = docs["ConfigMap"]["metadata"]["name"]
        self.assertRegex(name, r"^avx-gateway-[a-z0-9]{10}$")
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        self.assertIn({"name": "config", "configMap": {"name": name}}, volumes)
        ports = {p["name"]: p["targetPort"] for p in docs["Service"]["spec"]["ports"]}
        self.assertEqual(ports, {"http": "http", "https": "https"})


def values_paths(template_text: str) -> set[tuple[str, ...]]:
    return {tuple(m.split(".")[2:]) for m in re.findall(r"\.Values(?:\.\w+)+", template_text)}


_ACTION = re.compile(r"(\{\{-?\s*.*?\s*-?\}\})", re.S)
_VALUE = r"\.Values(?:\.\w+)+|\.Release\.Namespace"


def expand_default_config(values: dict[str, Any], namespace: str = "prod") -> str:
    """The chart's `tpl` of values.config, for the only forms the default config uses:
    ``{{ .Values.x }}``, ``{{ .Release.Namespace }}``, ``{{- if .Values.x }}`` or
    ``{{- if ne .Values.x "s" }}`` ... ``{{- else }}`` ... ``{{- end }}``, and ``{{-``/``-}}``
    trimming whitespace as Go templates do."""

    def lookup(expr: str) -> Any:
        if expr == ".Release.Namespace":
            return namespace
        node: Any = values
        for part in expr.split(".")[2:]:
            node = node[part]
        return node

    def condition(expr: str) -> bool:
        m = re.fullmatch(rf'ne ({_VALUE}) "([^"]*)"', expr)
        if m:
            return bool(lookup(m.group(1)) != m.group(2))
        assert re.fullmatch(_VALUE, expr), f"unsupported condition {expr!r}"
        return bool(lookup(expr))

    pieces = _ACTION.split(values["config"])
    actions = []
    for i in range(1, len(pieces), 2):
        m = re.fullmatch(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", pieces[i], re.S)
        assert m, pieces[i]
        if m.group(1):
            pieces[i - 1] = pieces[i - 1].rstrip(" \t\r\n")
        if m.group(3):
            pieces[i + 1] = pieces[i + 1].lstrip(" \t\r\n")
        actions.append(m.group(2))
    out = [pieces[0]]
    active, stack = True, []  # stack: (active outside the if, its condition)
    for expr, text in zip(actions, pieces[2::2]):
        if expr.startswith("if "):
            held = condition(expr[3:])
            stack.append((active, held))
            active = active and held
        elif expr == "else":
            outside, held = stack[-1]
            active = outside and not held
        elif expr == "end":
            active = stack.pop()[0]
        elif active:
            assert re.fullmatch(_VALUE, expr), f"unsupported action {expr!r}"
            value = lookup(expr)
            out.append(str(value).lower() if isinstance(value, bool) else str(value))
        if active:
            out.append(text)
    assert not stack, "unclosed if"
    text = "".join(out)
    assert "{{" not in text, text
    return text


def tls_values(values: dict[str, Any], **tls: Any) -> dict[str, Any]:
    """values.yaml with tls enabled (and ``tls`` overrides)."""
    values = deepcopy(values)
    values["tls"].update(enabled=True, secretName="gw-tls", **tls)
    return values


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

    def test_the_default_config_with_tls_listens_on_https_with_the_mounted_secret(self) -> None:
        secret = mint_tls_secret(temporary_directory(self))
        plain = GatewayConfig.from_toml(expand_default_config(self.values), source="values.yaml")
        for tls, ca in (
            ({}, None),
            ({"clientAuth": "optional"}, "ca.crt"),
            ({"clientAuth": "require", "proxyProtocol": True}, "ca.crt"),
        ):
            v = tls_values(self.values, **tls)
            v["ports"].update(http=8000, https=9443)
            text = expand_default_config(v)
            config = GatewayConfig.from_toml(with_tls_files(text, secret), source="values.yaml")
            self.assertEqual(data_plane_ports(config), ([8000], [9443]))
            (listener,) = config.server.listeners
            self.assertEqual(listener.proxy_protocol, tls.get("proxyProtocol", False))
            self.assertEqual(listener.tls.cert_file, str(secret / "tls.crt"))
            self.assertEqual(listener.tls.key_file, str(secret / "tls.key"))
            self.assertEqual(listener.tls.client_auth, tls.get("clientAuth", "none"))
            self.assertEqual(listener.tls.client_ca_file, ca and str(secret / ca))
            # Nothing else changes: the same config but for the listeners.
            server = dataclasses.replace(config.server, listen=(), listeners=(), port=8080)
            self.assertEqual(dataclasses.replace(config, server=server), plain)

    def test_with_tls_disabled_the_tls_values_change_nothing(self) -> None:
        v = deepcopy(self.values)
        v["tls"].update(secretName="gw-tls", clientAuth="require", proxyProtocol=True)
        v["ports"]["https"] = 9443
        self.assertEqual(expand_default_config(v), expand_default_config(self.values))

    def test_defaults(self) -> None:
        v = self.values
        self.assertIn(v["image"]["tag"], ("", __version__))  # "" is the appVersion
        self.assertEqual(
            v["tls"],
            {
                "enabled": False,
                "secretName": "",
                "clientAuth": "none",
                "clientCaSecretName": "",
                "proxyProtocol": False,
            },
        )
        self.assertEqual(v["ports"]["https"], 8443)
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
