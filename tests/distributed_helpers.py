"""Launching a test script on two CPU processes (gloo) with `torch.distributed.run`, as the distributed tests do."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).parent / "scripts"


def run_two_processes(script: str, *arguments, port_base: int, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `tests/scripts/<script>` on two processes, offline and single-threaded, with the test helpers importable;
    fails the test with the end of stderr when a process fails. Ports differ per test and per pytest process."""
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    port = str(port_base + os.getpid() % 1000)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    result = subprocess.run(
        [*command, str(SCRIPTS / script), *map(str, arguments)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result
