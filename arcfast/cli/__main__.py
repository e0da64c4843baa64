"""``python -m arcfast.cli ARGS`` (as torchrun's ``-m arcfast.cli``) is the ``arcfast ARGS`` command."""
import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
