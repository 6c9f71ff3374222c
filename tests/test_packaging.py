"""The installed package: twistd finds the agw plugin from anywhere."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import tempfile
import tomllib

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support import REPO


class InstalledPluginTests(SynchronousTestCase):
    def test_twistd_lists_agw_outside_the_checkout(self) -> None:
        """
        Run from an empty directory, so only the installation (not the
        checkout on sys.path) can provide twisted/plugins/agw_plugin.py.
        """
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        with tempfile.TemporaryDirectory() as empty:
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            installed = subprocess.run(
                [sys.executable, "-c", "import importlib.metadata as m; m.distribution('agw')"], cwd=empty, env=env
            )
            if installed.returncode != 0:
                raise SkipTest("agw is not installed in this environment")
            out = subprocess.run([twistd, "--help"], cwd=empty, env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(" agw ", out.stdout)


class PackageDataTests(SynchronousTestCase):
    def test_the_admin_page_is_shipped(self) -> None:
        """Every file of the admin page (agw/serve/admin_ui) is package data: a wheel serves the page too."""
        with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
            patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["agw.serve"]
        folder = os.path.join(REPO, "agw", "serve", "admin_ui")
        names = sorted(os.listdir(folder))
        self.assertIn("index.html", names)
        for name in names:
            self.assertTrue(any(fnmatch.fnmatch(f"admin_ui/{name}", pattern) for pattern in patterns), name)
        from agw.serve._admin_page import PAGE_FILES

        self.assertEqual(sorted(name for name, _ in PAGE_FILES.values()), names)  # each is served, nothing else is there
