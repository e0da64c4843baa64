"""The `arcfast` command line: :mod:`.main` (the commands and their dispatch), :mod:`.run` (ttft and
eval), :mod:`.train` (train), :mod:`.args` (what their parsers share)."""
from .main import main
from .run import EXIT_NOT_WRITTEN

__all__ = ["main", "EXIT_NOT_WRITTEN"]
