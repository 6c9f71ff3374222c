"""
HTTP forwarding: C{completions}, C{embeddings}, C{responses} (usage read on
the way through) and C{passthrough}, over one persistent connection pool
per gateway. Imports L{agw.routing}, L{agw.metering} and L{agw.config}.
"""

from agw.http._body import BodyRelay
from agw.http._client import HTTPOptions, TargetEndpoints, UpstreamClient
from agw.http._forward import HTTPForwarder

__all__ = ["BodyRelay", "HTTPForwarder", "HTTPOptions", "TargetEndpoints", "UpstreamClient"]
