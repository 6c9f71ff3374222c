"""
The Dockerfile and deploy/kubernetes/ checked as far as this machine allows
(no container runtime, no cluster): they parse, kustomize renders them, and
their ports, probes, paths, user and secrets match agw's config and defaults.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import jsonschema
import yaml
from twisted.trial.unittest import SynchronousTestCase

from agw.config import GatewayConfig, parse_config
from tests.support import REPO

DEPLOY = os.path.join(REPO, "deploy", "kubernetes")


def dockerfile() -> dict[str, list[str]]:
    """Each instruction of the Dockerfile: its arguments, one entry per occurrence (continuations joined)."""
    with open(os.path.join(REPO, "Dockerfile")) as f:
        text = re.sub(r"\\\n\s*", " ", f.read())
    instructions: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, rest = line.partition(" ")
            instructions.setdefault(name.upper(), []).append(rest.strip())
    return instructions


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list), text
    return value


def manifests() -> list[dict[str, Any]]:
    """What C{kubectl apply -k deploy/kubernetes} would apply (rendered by kustomize when kubectl is here)."""
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        rendered = subprocess.run([kubectl, "kustomize", DEPLOY], capture_output=True, text=True, timeout=60)
        assert rendered.returncode == 0, rendered.stderr
        return [d for d in yaml.safe_load_all(rendered.stdout) if d]
    with open(os.path.join(DEPLOY, "kustomization.yaml")) as f:
        resources = yaml.safe_load(f)["resources"]
    documents = []
    for name in resources:
        with open(os.path.join(DEPLOY, name)) as f:
            documents += [d for d in yaml.safe_load_all(f) if d]
    return documents


class DockerfileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.docker = dockerfile()
        with open(os.path.join(REPO, "config.yaml")) as f:
            self.config = parse_config(f.read(), {"OPENAI_API_KEY": "k"})

    def test_slim_base_and_non_root_user(self) -> None:
        self.assertRegex(self.docker["FROM"][0], r"^python:3\.\d+-slim$")
        (user,) = self.docker["USER"]
        self.assertNotIn(user, ("0", "root"))

    def test_runs_the_guides_command_on_the_shipped_config(self) -> None:
        command = exec_form(self.docker["ENTRYPOINT"][0]) + exec_form(self.docker["CMD"][0])
        self.assertEqual(command[:2], ["twistd", "-n"])
        self.assertEqual(command[command.index("agw") + 1:], ["-f", "/etc/agw/config.yaml"])
        self.assertIn("config.yaml /etc/agw/config.yaml", self.docker["COPY"])

    def test_exposes_and_probes_the_configs_ports(self) -> None:
        config = self.config
        wanted = {b.port for b in config.binds} | {config.stats_addr.port, config.readiness_addr.port}
        self.assertEqual({int(p) for p in self.docker["EXPOSE"][0].split()}, wanted)
        (health,) = self.docker["HEALTHCHECK"]
        self.assertIn(f"127.0.0.1:{config.readiness_addr.port}/healthz/ready", health)


class KubernetesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.documents = manifests()
        self.by_kind = {d["kind"]: d for d in self.documents}
        self.assertEqual(sorted(self.by_kind), ["ConfigMap", "Deployment", "Secret", "Service"])
        self.secret = self.by_kind["Secret"]["stringData"]
        self.config_text = self.by_kind["ConfigMap"]["data"]["config.yaml"]
        self.pod = self.by_kind["Deployment"]["spec"]["template"]
        (self.container,) = self.pod["spec"]["containers"]

    def config(self) -> GatewayConfig:
        # Every $VARIABLE the config uses is provided by the Secret the pods read.
        return parse_config(self.config_text, self.secret)

    def test_config_is_valid_for_agw_and_its_schema(self) -> None:
        config = self.config()
        self.assertTrue(config.database_url is not None and config.database_url.value.startswith("postgresql://"))
        with open(os.path.join(REPO, "agw", "config", "agw.schema.json")) as f:
            jsonschema.validate(yaml.safe_load(self.config_text), json.load(f))
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(self.config_text)
            f.flush()
            twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
            checked = subprocess.run(
                [twistd, "--pidfile=", "agw", "-f", f.name, "--validate-only"],
                env={**os.environ, **self.secret, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=60,
            )
        self.assertEqual(checked.returncode, 0, checked.stderr)
        self.assertIn("budgets: postgresql\n", checked.stdout)  # the scheme only: never the password
        self.assertNotIn("replace-me", checked.stdout + checked.stderr)

    def test_ports_probes_and_scrape_annotations_match_the_config(self) -> None:
        config = self.config()
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.assertEqual(
            sorted(ports.values()), sorted({b.port for b in config.binds} | {config.stats_addr.port, config.readiness_addr.port}),
        )
        probe = self.container["readinessProbe"]["httpGet"]
        self.assertEqual((probe["path"], ports[probe["port"]]), ("/healthz/ready", config.readiness_addr.port))
        annotations = self.pod["metadata"]["annotations"]
        self.assertEqual(annotations["prometheus.io/scrape"], "true")
        self.assertEqual((int(annotations["prometheus.io/port"]), annotations["prometheus.io/path"]), (config.stats_addr.port, "/metrics"))
        service = self.by_kind["Service"]["spec"]
        for selector, value in service["selector"].items():
            self.assertEqual(self.pod["metadata"]["labels"][selector], value)
        self.assertEqual({ports[p["targetPort"]] for p in service["ports"]}, {config.binds[0].port, config.stats_addr.port})

    def test_config_secret_user_and_shutdown_fit_the_image(self) -> None:
        args = self.container["args"]
        config_path = args[args.index("-f") + 1]
        (mount,) = [m for m in self.container["volumeMounts"] if m["name"] == "config"]
        self.assertEqual(os.path.join(mount["mountPath"], "config.yaml"), config_path)
        self.assertEqual(self.container["envFrom"][0]["secretRef"]["name"], self.by_kind["Secret"]["metadata"]["name"])
        security = self.pod["spec"]["securityContext"]
        self.assertTrue(security["runAsNonRoot"])
        self.assertEqual(str(security["runAsUser"]), dockerfile()["USER"][0])
        drain = float(args[args.index("--drain-period") + 1])
        self.assertGreater(self.pod["spec"]["terminationGracePeriodSeconds"], drain)
        self.assertGreaterEqual(self.by_kind["Deployment"]["spec"]["replicas"], 2)
