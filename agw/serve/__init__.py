"""
Running agw: the L{Gateway} (a config built into resources, relays and
forwarders: the embedding API), its L{GatewayService} (listeners, drain on
stop), twistd's L{Options} and L{makeService}, and the worker pool for
C{--workers}, and live reload (L{ConfigReloader}). The top layer: it may import every other package.
"""

from agw.serve._admin import MetricsResource, ReadinessResource, readiness_root, stats_root
from agw.serve._gateway import Gateway
from agw.serve._listening import ListeningService
from agw.serve._options import Options, gateway_from_options
from agw.serve._reload import ConfigReloader
from agw.serve._reloaded import Reloaded, ReloadRefused
from agw.serve._service import GatewayService
from agw.serve._site import GatewayRequest, GatewaySite
from agw.serve._tap import makeService
from agw.serve._tls import BindTLS, ListenerTLSError

__all__ = [
    "BindTLS", "ConfigReloader", "Gateway", "GatewayRequest", "GatewayService", "GatewaySite", "ListenerTLSError", "ListeningService", "MetricsResource", "Options",
    "ReadinessResource", "Reloaded", "ReloadRefused", "gateway_from_options", "makeService", "readiness_root", "stats_root",
]
