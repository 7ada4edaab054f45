"""perf/peak_mem_mb and the benches' peak RSS must be the process's own peak.

Linux carries getrusage's ru_maxrss across fork + exec, so a worker started by a parent
that holds a lot of memory (a pytest session, the bench driver) would report at least the
parent's RSS as its own peak; that is how a full test run once saw `remax plan` 'off' by 43%."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from remax.trainer.metrics import peak_rss_mb

CHILD = "from remax.trainer.metrics import peak_rss_mb; import resource; " \
        "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's /proc/self/status")
def test_a_child_of_a_big_parent_reports_its_own_peak():
    ballast = bytearray(1536 * 2**20)  # 1.5 GiB, touched page by page so it is resident
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    assert peak_rss_mb() > 1536
    own, maxrss = map(float, subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                                            check=True).stdout.split())
    del ballast
    assert own < 1000, own  # the child imports torch, far below the parent's 1.5 GiB ballast
    assert 0 < own <= maxrss  # VmHWM never exceeds what getrusage says
