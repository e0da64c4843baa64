"""What every `arcfast` subcommand's parser shares: the help formatter that states each default,
``-v``, the ``--train-tokens`` type, and the message for a source where no task loaded."""
from __future__ import annotations

import argparse


class _Help(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written; every option's help ends with its default (see _show_defaults)."""


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default: X)`` to the help of every option of ``parser`` and its subcommands that
    has a default worth showing (not None, not False) and does not state it already."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.formatter_class = _Help
                _show_defaults(sub)
            continue
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if any(action.default is x for x in (None, False, argparse.SUPPRESS)) or "default" in (action.help or ""):
            continue
        action.help = f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"


def _add_verbose(p) -> None:
    # Also after the subcommand (arcfast ttft ... -v); SUPPRESS keeps the top-level value otherwise.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more")


def token_modules(text: str) -> tuple:
    """argparse type of --train-tokens (:func:`arcfast.lora.multi.parse_tokens`)."""
    from ..lora.multi import parse_tokens

    try:
        return parse_tokens(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _no_task_loaded(source: str, problems: list) -> str:
    if not problems:
        return f"{source}: no task was loaded (the source holds no task)"
    return (f"{source}: no task was loaded; {len(problems)} skipped "
            f"(first: {problems[0]})")
