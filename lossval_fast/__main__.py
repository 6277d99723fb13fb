"""`python -m lossval_fast ...`: the `lossval-fast` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
