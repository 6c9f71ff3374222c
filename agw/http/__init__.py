"""
HTTP route types through treq: C{completions}, C{embeddings}, C{responses}
(usage read on the way through) and C{passthrough}.
"""

from agw.http.client import HTTPOptions, UpstreamClient
from agw.http.forward import HTTPForwarder

__all__ = ["HTTPForwarder", "HTTPOptions", "UpstreamClient"]
