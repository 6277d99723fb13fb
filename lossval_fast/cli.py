"""The `lossval-fast` command (`python -m lossval_fast`)."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lossval-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the main job on the bundled data set")
    sub.add_parser("info", help="version, backends built, devices, threads")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import main as demo
        return demo()
    if args.command == "info":
        from . import info
        json.dump(info(), sys.stdout, indent=2, default=str)
        print()
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands
