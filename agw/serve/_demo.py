"""
C{twistd -n agw -f config.yaml --demo}: the config as it is, its backends
sent to L{agw.testing.FakeOpenAI} on loopback. No key, no network: what a
new user runs first to see tokens counted.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

from attrs import evolve
from twisted.application.service import Service
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from agw.config import Address, GatewayConfig, Route, Secret
from agw.testing import FakeOpenAI

# What an unset variable (the API key, say) reads as: the fake takes any key.
DEMO_VALUE = "demo"


class DemoEnvironment(Mapping[str, str]):
    """The process environment, with every unset variable reading as L{DEMO_VALUE}."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        return self._environ.get(name, DEMO_VALUE)

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)


def demo_config(config: GatewayConfig, upstream: str) -> GatewayConfig:
    """
    C{config} with every backend sent to C{upstream} (C{host:port}, plain
    HTTP), and every backend key replaced by L{DEMO_VALUE}: a real key in
    the environment is not sent even to the fake.
    """

    def route(r: Route) -> Route:
        backends = tuple(evolve(backend, host_override=upstream) for backend in r.backends)
        key = Secret(DEMO_VALUE) if r.policies.backend_key is not None else None
        return evolve(r, backends=backends, policies=evolve(r.policies, backend_tls=None, backend_key=key))

    binds = tuple(
        evolve(bind, listeners=tuple(evolve(lst, routes=tuple(route(r) for r in lst.routes)) for lst in bind.listeners))
        for bind in config.binds
    )
    return evolve(config, binds=binds)


def listen_fake(reactor: Any) -> IListeningPort:
    """A L{FakeOpenAI} listening on an ephemeral loopback port, now (its port is in the config)."""
    ports: list[Any] = []
    # A TCP endpoint listens at once: the Deferred has fired on return.
    FakeOpenAI().listen(reactor).addBoth(ports.append)
    if not ports or not IListeningPort.providedBy(ports[0]):
        raise RuntimeError(f"the demo provider cannot listen: {ports[0] if ports else 'no answer'}")
    return ports[0]


class DemoProvider(Service):
    """The fake provider's port as a service: says what to try when started, closes when stopped."""

    log = Logger()

    def __init__(self, port: IListeningPort, config: GatewayConfig, interface: str, as_log: bool = False) -> None:
        self.port, self._config, self._interface, self._as_log = port, config, interface, as_log

    def startService(self) -> None:
        super().startService()
        instructions = demo_instructions(self._config, self.port.getHost().port, self._interface)
        if self._as_log:  # --log-format json: standard output holds JSON lines only
            self.log.info("{instructions}", instructions=instructions.rstrip())
            return
        # To the terminal as they are (twistd's log would prefix each line), to copy.
        sys.__stdout__.write(instructions)
        sys.__stdout__.flush()

    def stopService(self) -> Any:
        super().stopService()
        return self.port.stopListening()


def demo_instructions(config: GatewayConfig, provider_port: int, interface: str) -> str:
    """What to try against a demo gateway, as shell commands."""
    scheme = "https" if any(listener.tls for listener in config.binds[0].listeners) else "http"
    base = f"{scheme}://{Address(_reachable(interface), config.binds[0].port).authority}/v1"
    stats = Address(_reachable(config.stats_addr.host), config.stats_addr.port).authority
    admin = Address(_reachable(config.admin_addr.host), config.admin_addr.port).authority
    body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}'
    return (
        f"agw demo: every backend is agw.testing's fake OpenAI on 127.0.0.1:{provider_port}; no key, no network.\n"
        f"  curl -s {base}/chat/completions -H 'Content-Type: application/json' -d '{body}'\n"
        f"  python -c \"from openai import OpenAI; print(OpenAI(api_key='demo', base_url='{base}')"
        f".chat.completions.create(model='gpt-4o-mini', messages=[{{'role': 'user', 'content': 'hi'}}]).usage)\"\n"
        f"  curl -s http://{stats}/metrics | grep agentgateway_gen_ai_client_token_usage_sum\n"
        f"  open http://{admin}/ in a browser: live sessions, budgets and spend (docs/admin.md)\n"
    )


def _reachable(host: str) -> str:
    """A host to connect to for a listening address (a wildcard: loopback)."""
    return "127.0.0.1" if host in ("", "::", "0.0.0.0") else host
