"""``launch/gpu_check.sh`` on a machine without CUDA: a clean refusal, nothing run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check runs")
def test_gpu_check_refuses_cleanly_without_cuda(tmp_path):
    work = tmp_path / "check"
    done = subprocess.run(["bash", str(ROOT / "launch" / "gpu_check.sh"), str(work)],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert lines == [f"gpu_check: torch {torch.__version__} sees no CUDA device on this "
                     "machine; run launch/gpu_check.sh on a GPU machine"]
    assert not work.exists()  # nothing was started
