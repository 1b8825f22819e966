"""The shipped deployment files stay consistent with the code."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.config import GatewayConfig

REPO = Path(__file__).resolve().parents[2]


class DeployFileTests(SynchronousTestCase):
    def test_kubernetes_configmap_holds_a_valid_gateway_config(self) -> None:
        text = (REPO / "deploy/kubernetes/configmap.yaml").read_text()
        block = text.split("gateway.toml: |\n", 1)[1]
        toml = "\n".join(line[4:] for line in block.splitlines())
        config = GatewayConfig.from_toml(toml, source="configmap")
        self.assertEqual(config.health.liveness_path, "/healthz")
        self.assertEqual(config.health.readiness_path, "/ready")
        self.assertLess(config.server.drain_timeout_ms / 1000, 30)  # terminationGracePeriod

    def test_probes_in_the_deployment_match_the_gateway_paths(self) -> None:
        text = (REPO / "deploy/kubernetes/deployment.yaml").read_text()
        self.assertIn("path: /healthz", text)
        self.assertIn("path: /ready", text)

    def test_dockerfile_runs_twistd_as_a_non_root_user(self) -> None:
        text = (REPO / "Dockerfile").read_text()
        self.assertIn('ENTRYPOINT ["twistd", "-n", "--pidfile=", "avx-gateway"]', text)
        self.assertIn("USER 10001", text)
