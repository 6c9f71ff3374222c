"""
agw: an AI gateway on Twisted. It relays the OpenAI Realtime API and HTTP API,
injects the backend's API key and counts every token per model into
Prometheus, reading agentgateway's config format.

Embedding::

    from agw import Gateway
    gateway = Gateway.from_file("config.yaml")
    site_root.putChild(b"ai", gateway.resource())   # a bind's routes under /ai
    gateway.service().setServiceParent(application)  # or: all binds, stats, readiness, admin page
"""

from agw.config import ConfigError, GatewayConfig, load_config, parse_config
from agw.metering import GatewayMetrics
from agw.serve import Gateway

__all__ = ["ConfigError", "Gateway", "GatewayConfig", "GatewayMetrics", "load_config", "parse_config"]
