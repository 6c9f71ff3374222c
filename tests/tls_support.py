"""
Helpers for tests of agw's HTTPS listeners: the seed config served over
TLS with a certificate from an L{agw.testing.TestCA}, and blocking clients
(run them in threads) that trust that CA.
"""

from __future__ import annotations

import copy
import json
import socket
import ssl
from typing import Any

import yaml
from cryptography import x509
from websockets.sync.client import ClientConnection, connect

from agw.testing import TestCA
from tests.support import CLIENT_KEY, recv_event, seed_config_text


def https_config(upstream_port: int, tls: dict[str, Any], http_port: int | None = None) -> str:
    """
    The seed config with its bind made HTTPS (C{tls}: the listener's
    C{tls}); with C{http_port}, the same routes also on a plain HTTP bind
    there, side by side.
    """
    data = yaml.safe_load(seed_config_text(upstream_port))
    plain = copy.deepcopy(data["binds"][0])
    listener = data["binds"][0]["listeners"][0]
    listener["protocol"], listener["tls"] = "HTTPS", tls
    if http_port is not None:
        plain["port"] = http_port
        data["binds"].append(plain)
    return yaml.safe_dump(data)


def client_context(ca: TestCA, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    """A client context trusting C{ca} only (C{minimum_version}/C{maximum_version} as given)."""
    context = ssl.create_default_context(cadata=ca.ca_pem.decode("ascii"))
    for name, version in versions.items():
        setattr(context, name, version)
    return context


def peer_serial(sock: Any) -> int:
    """The serial number of the certificate the server presented on C{sock} (an SSL socket)."""
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number


def handshake(port: int, context: ssl.SSLContext, server_name: str | None = None) -> dict[str, Any]:
    """One TLS handshake with 127.0.0.1:C{port} (SNI C{server_name}); what was agreed."""
    if server_name is None:
        context.check_hostname = False  # by address: no SNI is sent (the certificate still names 127.0.0.1)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            return {
                "version": tls.version(), "cipher": tls.cipher()[0], "alpn": tls.selected_alpn_protocol(),
                "serial": peer_serial(tls),
            }


def open_wss(url: str, ca: TestCA) -> ClientConnection:
    """A Realtime session over wss:// trusting C{ca}, past its C{session.created}."""
    ws = connect(
        url, ssl=client_context(ca), additional_headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        max_size=None, open_timeout=10, compression=None,
    )
    recv_event(ws)
    return ws


def respond(ws: ClientConnection, text: str = "Say hello") -> dict[str, Any]:
    """One text response on an open session; its C{response.done}."""
    ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}],
    }}))
    ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
    while (event := recv_event(ws))["type"] != "response.done":
        pass
    return event


def wss_session(url: str, ca: TestCA, responses: int) -> tuple[int, list[dict[str, Any]]]:
    """A whole session over wss://: the certificate's serial and each C{response.done}."""
    with open_wss(url, ca) as ws:
        return peer_serial(ws.socket), [respond(ws, f"Say hello {i}") for i in range(responses)]

