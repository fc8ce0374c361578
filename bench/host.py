"""Starting the nnspin host for a benchmark: target/debug/nnspin on a free loopback port."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_host(*args: str) -> tuple[subprocess.Popen, str]:
    """Runs `nnspin up` with `args` (spin.toml unless --from says otherwise) and returns the process and
    its base URL once it is ready."""
    process = subprocess.Popen(
        [str(ROOT / "target/debug/nnspin"), "up", "--listen", "127.0.0.1:0", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    url = None
    for line in process.stdout:
        if "listening on " in line:
            url = line.split("listening on ", 1)[1].strip()
        if "nnspin ready" in line and url:
            return process, url
    sys.exit("the host did not start")
