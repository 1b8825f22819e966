"""twistd plugin: ``twistd -n avx-gateway --config gateway.toml``."""

from twisted.application.service import ServiceMaker

avxGateway = ServiceMaker(
    "avx-gateway",
    "avx_twisted.tap",
    "An API gateway and reverse proxy (routing, load balancing, auth, limits, metrics).",
    "avx-gateway",
)
