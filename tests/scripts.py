"""Running a snippet in a fresh Python process (memory measurements, kills, launchers)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_script(code: str, timeout=600, env=None):
    """Run `code` (dedented) with this interpreter from the tests folder, never the repository root, whose source
    tree has no compiled _C and would shadow the installed package."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=str(HERE), env=env)
