"""
agw: an AI gateway on Twisted. It relays the OpenAI Realtime API and HTTP API,
injects the backend's API key and counts every token per model into
Prometheus, reading agentgateway's config format.

Embedding::

    from agw import Gateway
    gateway = Gateway.from_file("config.yaml")
    site_root.putChild(b"v1", ...)  # or use gateway.resource() as a Site root
    gateway.service().setServiceParent(application)
"""

from agw.config import ConfigError, GatewayConfig, load_config, parse_config
from agw.gateway import Gateway
from agw.metrics import GatewayMetrics

__all__ = ["ConfigError", "Gateway", "GatewayConfig", "GatewayMetrics", "load_config", "parse_config"]
