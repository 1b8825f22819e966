"""The Helm chart through Helm itself: ``helm lint`` and ``helm template`` (tests/support/helm.py).

What is rendered is checked against the gateway: the ConfigMap's gateway.toml loads, the probes
and ports are the config's, the pods roll when the config changes, and the stop timeline fits in
the grace period.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from avx_twisted._version import __version__
from avx_twisted.config import GatewayConfig
from tests.support import helm
from tests.unit.test_deploy import check_pod_against_config, cli

CHART = Path(__file__).resolve().parents[2] / "deploy/helm/avx-gateway"
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())

EVERYTHING_ON = {
    "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 7},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
}


class Case:
    """The trial assertions check_pod_against_config uses, on pytest's assert."""

    def assertEqual(self, a: Any, b: Any, msg: str = "") -> None:  # noqa: N802
        assert a == b, msg or f"{a!r} != {b!r}"

    def assertTrue(self, a: Any, msg: str = "") -> None:  # noqa: N802
        assert a, msg

    def assertGreater(self, a: Any, b: Any, msg: str = "") -> None:  # noqa: N802
        assert a > b, msg or f"{a!r} <= {b!r}"


def by_kind(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = by_kind(objects)[kind]
    return found


def gateway_config(objects: list[dict[str, Any]]) -> GatewayConfig:
    text = one(objects, "ConfigMap")["data"]["gateway.toml"]
    return GatewayConfig.from_toml(text, source="rendered ConfigMap")


def test_lint_is_clean_with_defaults_and_with_everything_on():
    assert helm.lint(CHART) == []
    assert helm.lint(CHART, EVERYTHING_ON) == []


def test_default_render_is_a_valid_gateway_deployment():
    objects = helm.template(CHART)
    kinds = by_kind(objects)
    assert sorted(kinds) == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    config = gateway_config(objects)
    deployment = one(objects, "Deployment")
    check_pod_against_config(Case(), deployment, config)
    assert deployment["spec"]["replicas"] == DEFAULTS["replicaCount"]
    pod = deployment["spec"]["template"]["spec"]
    configmap = one(objects, "ConfigMap")["metadata"]["name"]
    assert {"name": "config", "configMap": {"name": configmap}} in pod["volumes"]
    # The release namespace reaches the config through tpl.
    assert config.routes[0].upstream.urls == ("http://users.prod.svc.cluster.local:8001",)
    (service,) = kinds["Service"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_rendered_config_passes_every_start_up_check(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(one(helm.template(CHART), "ConfigMap")["data"]["gateway.toml"])
    out = cli("check", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


def test_the_image_tag_is_the_app_version_and_never_latest():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    image = helm.template(CHART)
    (c,) = one(image, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert c["image"] == f"avx-gateway:{__version__}"
    (c,) = one(
        helm.template(CHART, {"image": {"repository": "registry.example/gw", "tag": "0.2.0"}}),
        "Deployment",
    )["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "registry.example/gw:0.2.0"
    with pytest.raises(Exception, match=r"image\.tag: pin a version, not \"latest\""):
        helm.template(CHART, {"image": {"tag": "latest"}})


def checksum(values: dict[str, Any] | None) -> str:
    pod = one(helm.template(CHART, values), "Deployment")["spec"]["template"]
    return pod["metadata"]["annotations"]["checksum/config"]


def test_the_config_checksum_rolls_the_pods_when_the_config_changes():
    default = checksum(None)
    assert len(default) == 64 and int(default, 16) >= 0
    assert checksum(None) == default
    assert checksum({"replicaCount": 5}) == default  # not a config change
    changed = DEFAULTS["config"].replace("timeout_ms = 30000", "timeout_ms = 20000")
    assert changed != DEFAULTS["config"]
    assert checksum({"config": changed}) != default
    # A change through a value the config uses is a config change too.
    assert checksum({"ports": {"health": 8181}}) != default
    # It is the digest of what the ConfigMap holds.
    text = one(helm.template(CHART), "ConfigMap")["data"]["gateway.toml"]
    assert hashlib.sha256(text.encode()).hexdigest() == default


def test_ports_follow_the_values_into_config_probes_and_annotations():
    values = {"ports": {"http": 8000, "health": 8181, "metrics": 9191}}
    objects = helm.template(CHART, values)
    config = gateway_config(objects)
    assert config.server.port == 8000
    check_pod_against_config(Case(), one(objects, "Deployment"), config)


def test_hpa_pdb_and_service_monitor_when_enabled():
    objects = helm.template(CHART, EVERYTHING_ON)
    kinds = by_kind(objects)
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"]  # the HPA owns it

    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 7)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 2 and "maxUnavailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == gateway_config(objects).metrics.path
    (metrics_service,) = [
        s
        for s in kinds["Service"]
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [p["name"] for p in metrics_service["spec"]["ports"]] == ["metrics"]
    assert metrics_service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert metrics_service["spec"]["selector"].items() <= pod_labels.items()


def test_secrets_reach_the_config_through_env(monkeypatch):
    config = DEFAULTS["config"] + '\n[auth.jwt]\nsecret = "${env.AVX_JWT_SECRET}"\n'
    values = {
        "config": config,
        "env": [
            {
                "name": "AVX_JWT_SECRET",
                "valueFrom": {"secretKeyRef": {"name": "gw-jwt", "key": "secret"}},
            }
        ],
        "envFrom": [{"secretRef": {"name": "gw-secrets"}}],
    }
    objects = helm.template(CHART, values)
    (c,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert c["env"] == values["env"]
    assert c["envFrom"] == values["envFrom"]
    text = one(objects, "ConfigMap")["data"]["gateway.toml"]
    assert "${env.AVX_JWT_SECRET}" in text  # substituted by the gateway, not by Helm
    monkeypatch.setitem(os.environ, "AVX_JWT_SECRET", "from-the-secret")
    assert GatewayConfig.from_toml(text).auth.jwt.secret == "from-the-secret"


def test_the_schema_refuses_bad_values():
    errors = helm.sdk().HelmValuesError
    for bad, where in (
        ({"replicaCount": "three"}, "/replicaCount"),
        ({"ports": {"health": 70000}}, "/ports/health"),
        ({"service": {"type": "Nope"}}, "/service/type"),
    ):
        with pytest.raises(errors, match=where):
            helm.template(CHART, copy.deepcopy(bad))
