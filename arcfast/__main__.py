"""``python -m arcfast ARGS`` is the ``arcfast ARGS`` command (see arcfast/cli/)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
