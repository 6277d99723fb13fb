"""Shared test setup. TRITON_INTERPRET must be set before triton is first imported, so it happens here, at the
top, before anything imports lossval_fast.triton: without a GPU every Triton kernel runs in the CPU interpreter."""
import os
import shutil

if shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _restore_cpu_capability():
    """Tests may switch the CPU instruction set; put the best one back afterwards."""
    yield
    try:
        torch.ops.lossval_fast.set_cpu_capability("auto")
    except (AttributeError, RuntimeError):
        pass
