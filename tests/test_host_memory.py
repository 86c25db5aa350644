"""Freed host memory stays in the process for the commands (equirecon.host_memory), and the operator's choice wins."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from equirecon import host_memory
from equirecon.commands import runner

on_glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

_FAULTS = textwrap.dedent(
    """
    import resource

    import numpy as np

    from equirecon.host_memory import keep_freed_host_memory

    def faults():
        # A forward pass in small: buffers of a few MiB written, all freed, asked for again.
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            buffers = [np.ones(2**18) for _ in range(16)]
            del buffers
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    faults()
    before = faults()
    kept = keep_freed_host_memory()
    faults()
    print(before, kept, faults())
    """
)


@on_glibc
def test_freed_buffers_are_not_faulted_back_in():
    left_out = {*host_memory._OPERATOR_SETTINGS, "LD_PRELOAD", "EQUIRECON_KEEP_FREED_MEMORY"}
    environment = {key: value for key, value in os.environ.items() if key not in left_out}
    result = subprocess.run(
        [sys.executable, "-c", _FAULTS], env=environment, capture_output=True, text=True, timeout=120, check=True
    )
    before, kept, after = result.stdout.split()
    # 10 rounds of 16 × 2 MiB: glibc hands the pages back each round (~80k faults), then keeps them.
    assert kept == "True"
    assert int(before) > 10_000
    assert int(after) < int(before) // 100


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EQUIRECON_KEEP_FREED_MEMORY", "0"),
        ("MALLOC_MMAP_THRESHOLD_", "131072"),
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ],
)
def test_the_operators_choice_is_kept(monkeypatch, variable, value):
    calls = []
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *args: calls.append(args))
    monkeypatch.setenv(variable, value)
    assert host_memory.keep_freed_host_memory() is False
    assert calls == []  # mallopt was not even looked up


def test_a_refused_setting_is_reported(monkeypatch, caplog):
    class Libc:
        @staticmethod
        def mallopt(parameter, value):
            return 0

    for variable in ("EQUIRECON_KEEP_FREED_MEMORY", "LD_PRELOAD", *host_memory._OPERATOR_SETTINGS):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(host_memory.platform, "system", lambda: "Linux")
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *args: Libc())
    assert host_memory.keep_freed_host_memory() is False
    assert "mallopt refused" in caplog.text


def test_every_command_keeps_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "keep_freed_host_memory", lambda: calls.append(True))
    runner.setup()
    assert calls == [True]
