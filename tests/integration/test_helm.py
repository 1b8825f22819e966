"""The Helm chart through Helm itself: ``helm lint`` and ``helm template`` (tests/support/helm.py).

What is rendered is checked against the gateway: the ConfigMap's gateway.toml loads, the probes
and ports are the config's, the pods roll when the config changes, and the stop timeline fits in
the grace period. With ``tls.enabled`` the TLS Secret's files (/etc/avx/tls) are replaced by
certificates minted here (tests/support/pki.py) before the config is loaded and checked.
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
from tests.unit.test_deploy import (
    TLS_MOUNT,
    check_pod_against_config,
    cli,
    data_plane_ports,
    mint_tls_secret,
    secret_files,
    with_tls_files,
)

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


# --------------------------------------------------------------------------- TLS


def tls_on(**tls: Any) -> dict[str, Any]:
    return {"tls": {"enabled": True, "secretName": "gw-tls", **tls}}


def tls_volume(deployment: dict[str, Any]) -> dict[str, Any]:
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
    return volume


def test_with_tls_disabled_the_chart_renders_as_without_the_tls_values():
    """tls.enabled = false: the other tls values, ports.https and service.httpsPort change
    nothing (the defaults render byte for byte as the chart did before TLS existed)."""
    ignored = {
        "tls": {
            "enabled": False,
            "secretName": "gw-tls",
            "clientAuth": "require",
            "clientCaSecretName": "clients",
            "proxyProtocol": True,
        },
        "ports": {"https": 9443},
        "service": {"httpsPort": 8443},
    }
    assert helm.render(CHART, ignored) == helm.render(CHART)
    objects = helm.template(CHART, EVERYTHING_ON)
    deployment = one(objects, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [p["name"] for p in c["ports"]] == ["http", "health", "metrics"]
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/etc/avx-gateway", "/tmp"]
    assert secret_files(deployment) == {}
    config = gateway_config(objects)
    assert config.server.listeners == () and config.server.listen == ()
    assert data_plane_ports(config) == ([DEFAULTS["ports"]["http"]], [])
    for service in by_kind(objects)["Service"]:
        assert "https" not in [p["name"] for p in service["spec"]["ports"]]


@pytest.mark.parametrize(
    "tls, ca_from",
    [
        ({}, None),
        ({"clientAuth": "optional"}, "gw-tls"),  # ca.crt of the TLS Secret (cert-manager's)
        ({"clientAuth": "require", "clientCaSecretName": "clients-ca"}, "clients-ca"),
        ({"clientCaSecretName": "clients-ca"}, None),  # no client certificates: not mounted
    ],
    ids=["none", "optional-own-ca", "require-other-ca", "none-with-ca-secret"],
)
def test_tls_enabled_mounts_the_secret_and_listens_on_https(tmp_path, tls, ca_from):
    values = {**tls_on(**tls), "ports": {"http": 8000, "https": 9443}}
    assert helm.lint(CHART, values) == []
    objects = helm.template(CHART, values)
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]

    # The Secret, read-only at /etc/avx/tls: one projected volume, so that kubelet swaps the
    # certificate, its key and the CA together; no subPath (it would never be updated).
    sources = tls_volume(deployment)["projected"]["sources"]
    wanted = [("gw-tls", ["tls.crt", "tls.key"])]
    if ca_from == "gw-tls":
        wanted = [("gw-tls", ["tls.crt", "tls.key", "ca.crt"])]
    elif ca_from:
        wanted.append((ca_from, ["ca.crt"]))
    assert [
        (s["secret"]["name"], [i["key"] for i in s["secret"]["items"]]) for s in sources
    ] == wanted
    for source in sources:
        assert all(i["key"] == i["path"] for i in source["secret"]["items"])
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "tls"]
    assert mount == {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}

    assert {"name": "https", "containerPort": 9443, "protocol": "TCP"} in c["ports"]
    (service,) = by_kind(objects)["Service"]
    assert {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"} in service[
        "spec"
    ]["ports"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", "https"]

    # The config: a cleartext listener on ports.http and the TLS one on ports.https, reading
    # the mounted files; loaded and checked with minted files in their place.
    text = one(objects, "ConfigMap")["data"]["gateway.toml"]
    secret = mint_tls_secret(tmp_path)
    config = GatewayConfig.from_toml(with_tls_files(text, secret), source="rendered ConfigMap")
    assert data_plane_ports(config) == ([8000], [9443])
    (listener,) = config.server.listeners
    assert listener.tls.client_auth == tls.get("clientAuth", "none")
    assert (listener.tls.client_ca_file is None) == (ca_from is None)
    assert listener.proxy_protocol is False
    check_pod_against_config(
        Case(), deployment, config, lambda path: path.replace(str(secret), TLS_MOUNT)
    )
    path = tmp_path / "gateway.toml"
    path.write_text(with_tls_files(text, secret))
    out = cli("check", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


def test_without_the_secret_files_the_rendered_tls_config_is_refused_naming_them(tmp_path):
    """Without the Secret's files the gateway refuses to start, naming them (a pod whose Secret
    lacks a key fails at once, it does not serve without TLS)."""
    path = tmp_path / "gateway.toml"
    path.write_text(one(helm.template(CHART, tls_on()), "ConfigMap")["data"]["gateway.toml"])
    out = cli("check", "--config", str(path))
    assert out.returncode == 2
    assert f"{TLS_MOUNT}/tls.crt" in out.stderr


def test_proxy_protocol_on_the_tls_listener(tmp_path):
    text = one(helm.template(CHART, tls_on(proxyProtocol=True)), "ConfigMap")["data"][
        "gateway.toml"
    ]
    config = GatewayConfig.from_toml(with_tls_files(text, mint_tls_secret(tmp_path)))
    (listener,) = config.server.listeners
    assert listener.proxy_protocol is True and listener.tls is not None


def test_the_checksum_covers_the_config_and_nothing_secret():
    """The pod annotation is the digest of the ConfigMap's text alone: no Secret is read or
    rendered by the chart, so a renewed certificate never shows up in the pod template (it
    takes a SIGHUP or a rollout restart: docs/deployment.md)."""
    objects = helm.template(CHART, tls_on())
    assert "Secret" not in by_kind(objects)
    text = one(objects, "ConfigMap")["data"]["gateway.toml"]
    assert checksum(tls_on()) == hashlib.sha256(text.encode()).hexdigest() != checksum(None)
    # Another Secret is not a config change, but it is a new pod template (the volume).
    other = copy.deepcopy(tls_on())
    other["tls"]["secretName"] = "gw-tls-2"
    assert checksum(other) == checksum(tls_on())
    assert tls_volume(one(helm.template(CHART, other), "Deployment")) != tls_volume(
        one(objects, "Deployment")
    )


def test_deployment_annotations_for_a_reloader_stay_off_the_pod_template():
    reload = {"secret.reloader.stakater.com/reload": "gw-tls"}
    deployment = one(
        helm.template(CHART, {**tls_on(), "deploymentAnnotations": reload}), "Deployment"
    )
    assert deployment["metadata"]["annotations"] == reload
    assert not reload.keys() & deployment["spec"]["template"]["metadata"]["annotations"].keys()
    assert "annotations" not in one(helm.template(CHART), "Deployment")["metadata"]


def test_the_schema_refuses_bad_tls_values():
    errors = helm.sdk().HelmValuesError
    for bad, where in (
        ({"tls": {"enabled": True}}, "/tls/secretName"),
        ({"tls": {"enabled": True, "secretName": "Not_A_Name"}}, "/tls/secretName"),
        ({"tls": {"clientAuth": "maybe"}}, "/tls/clientAuth"),
        ({"tls": {"enabled": "yes"}}, "/tls/enabled"),
        ({"tls": {"proxyProtocol": "false"}}, "/tls/proxyProtocol"),
        ({"tls": {"secretname": "gw-tls"}}, "/tls"),  # a misspelt key is not ignored
        ({"ports": {"https": 0}}, "/ports/https"),
        ({"service": {"httpsPort": 70000}}, "/service/httpsPort"),
    ):
        with pytest.raises(errors, match=where):
            helm.template(CHART, copy.deepcopy(bad))
