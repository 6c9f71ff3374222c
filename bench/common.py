"""Shared pieces of the benchmarks: free ports, processes, the config."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def result_path(name: str) -> str:
    """Where a benchmark writes its JSON by default."""
    return os.path.join(HERE, "results", name)


def run_on_reactor(start: Callable[[], Any]) -> None:
    """Run the reactor until the Deferred C{start()} returns fires; exit 1 with its traceback if it failed."""
    from twisted.internet import reactor

    failure: list[Any] = []
    start().addErrback(failure.append).addBoth(lambda _: reactor.stop())
    reactor.run()
    if failure:
        failure[0].printTraceback()
        sys.exit(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start_fake(capture_output: bool = False, reply_words: int = 0) -> tuple[subprocess.Popen, int]:
    """
    The fake upstream in its own process; with C{capture_output}, its standard output (its connection count at exit) is
    kept for C{communicate()}; with C{reply_words}, every answer is that many words, one delta each.
    """
    port = free_port()
    output = {"stdout": subprocess.PIPE, "text": True} if capture_output else {}
    words = [str(reply_words)] if reply_words else []
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "serve_fake.py"), str(port), *words], cwd=REPO, **output)
    wait_port(port)
    return proc, port


def start_byte_relays(upstream_port: int) -> dict[str, tuple[subprocess.Popen, int]]:
    """
    Byte relays to the fake, as floors for what a relay adds on this
    machine: socat (C; if installed) and a Twisted TCP relay. C{name: (process, port)}.
    """
    relays = {}
    port = free_port()
    relays["tcp relay (Twisted)"] = (
        subprocess.Popen([sys.executable, os.path.join(HERE, "tcp_relay.py"), str(port), str(upstream_port)], cwd=REPO), port)
    if shutil.which("socat"):
        port = free_port()
        relays["tcp relay (socat, C)"] = (
            subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"TCP:127.0.0.1:{upstream_port},nodelay"]), port)
    for _, port in relays.values():
        wait_port(port)
    return relays


NGINX = """
daemon off; worker_processes 1; pid {dir}/nginx.pid; error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/f;
  uwsgi_temp_path {dir}/u; scgi_temp_path {dir}/s;
  upstream fake {{ server 127.0.0.1:{upstream}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://fake; proxy_http_version 1.1; proxy_buffering off;
      {location}
    }}
  }}
}}
"""
# Keep-alive to the upstream for HTTP; the Upgrade handshake passed on for WebSocket.
NGINX_HTTP = 'proxy_set_header Connection "";'
NGINX_WEBSOCKET = 'proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade"; proxy_read_timeout 1h;'


def start_nginx(upstream: int, websocket: bool = False) -> tuple[subprocess.Popen, int] | None:
    """nginx (one worker, Debian's nginx-light) proxying to the fake, with a generated config; C{None} if not installed."""
    if shutil.which("nginx") is None:
        return None
    directory, port = tempfile.mkdtemp(prefix="agw-bench-nginx-"), free_port()
    os.chmod(directory, 0o777)  # nginx's worker drops root
    with open(os.path.join(directory, "nginx.conf"), "w") as f:
        f.write(NGINX.format(dir=directory, upstream=upstream, port=port, location=NGINX_WEBSOCKET if websocket else NGINX_HTTP))
    proc = subprocess.Popen(["nginx", "-p", directory, "-c", os.path.join(directory, "nginx.conf")])
    wait_port(port)
    return proc, port


def repo_config(upstream_port: int) -> dict[str, Any]:
    """The repo's config.yaml, its bind on a free port and its backends pointed at the fake."""
    with open(os.path.join(REPO, "config.yaml")) as f:
        data = yaml.safe_load(f)
    data["binds"][0]["port"] = free_port()
    for route in data["binds"][0]["listeners"][0]["routes"]:
        for backend in route["backends"]:
            backend["ai"]["hostOverride"] = f"127.0.0.1:{upstream_port}"
    return data


def start_agw(upstream_port: int, *args: str) -> tuple[subprocess.Popen, int, int]:
    """twistd -n agw with the repo's config.yaml pointed at the fake; (process, port, stats port)."""
    data = repo_config(upstream_port)
    stats = free_port()
    data["config"] = {"statsAddr": f"127.0.0.1:{stats}"}
    proc, port = start_agw_with(data, *args)
    return proc, port, stats


def start_agw_with(data: dict, *args: str, config_path: str | None = None) -> tuple[subprocess.Popen, int]:
    """twistd -n agw with config C{data} (one bind), written to C{config_path} (a temporary file by default); (process, bind port)."""
    port, ready = data["binds"][0]["port"], free_port()
    data.setdefault("config", {}).setdefault("statsAddr", f"127.0.0.1:{free_port()}")
    data["config"]["readinessAddr"] = f"127.0.0.1:{ready}"
    config = open(config_path, "w") if config_path else tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    yaml.safe_dump(data, config)
    config.close()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    # A path: run agw under cProfile, stats saved there (one process only: a
    # --workers parent does no gateway work, and would overwrite the file).
    profile = os.environ.get("AGW_BENCH_PROFILE") if "--workers" not in args else None
    profiling = ["--profile", profile, "--profiler", "cprofile", "--savestats"] if profile else []
    proc = subprocess.Popen(
        [twistd, "-n", *profiling, "--pidfile=", "--logfile=" + os.environ.get("AGW_BENCH_LOG", "/dev/null"), "agw", "-f", config.name, "-i", "127.0.0.1", "--access-log", "off", *args],
        cwd=REPO, env={**os.environ, "OPENAI_API_KEY": "sk-bench"},
    )
    wait_port(ready)
    deadline = time.monotonic() + 30
    while True:  # ready once every worker is
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{ready}/healthz/ready", timeout=5).read()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.terminate()
                raise
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def children(pid: int) -> list[int]:
    """Pids of C{pid}'s child processes (agw's workers), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError):
                pass
    return found


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "maxrss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
