"""The installed package: twistd finds the agw plugin from anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SkipTest, SynchronousTestCase


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
