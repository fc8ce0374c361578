"""Runs the official `openai` Node SDK's test file (tests/node) against the session's host."""

import os
import shutil
import subprocess

from support import ROOT


def test_node_sdk_suite(host):
    node = shutil.which("node")
    assert node, "Node.js is needed (tests/run.sh installs the SDK with npm)"
    directory = ROOT / "tests" / "node"
    assert (directory / "node_modules" / "openai").exists(), "run tests/run.sh (npm ci in tests/node)"
    result = subprocess.run(
        [node, "--test", "--test-reporter=spec", "sdk.test.mjs"],
        cwd=directory, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NNSPIN_OPENAI_URL": host.openai_url},
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
