"""``docs/CLI.md``, the flag-by-flag reference of every `arcfast` command, generated from the
argument parsers themselves.

    python -m arcfast.cli.docs            # print it
    python -m arcfast.cli.docs --write    # write docs/CLI.md of this source checkout (make docs)
    python -m arcfast.cli.docs PATH       # write it to PATH

Every command :func:`arcfast.cli.main.build_parser` holds is walked, subcommands of subcommands
included, so a new command or flag is in the next generation with no change here. For each: its
usage line, its description, and a section per argument group with each flag, its metavar or
choices, its default and its help (``%(default)s`` and the like expanded as argparse does). A command
that hands its arguments to a parser of its own (``arcfast bench``, listed with ``add_help=False``)
is documented from that parser, named in :data:`PASSTHROUGH`.

The text depends on the parsers only: not on the terminal (usage lines are laid out at
:data:`WIDTH` columns here, never at argparse's terminal width), nor on the machine (a default under
the working, home, temporary or install directory is written relative to it, marked as depending on
the machine; a setting whose default is the machine's, a core count, is given as a default of the
parser's own, ``0: all cores``, with its help saying so), nor on set or dict order (choices given as
a set or dict are sorted). ``tests/test_cli_docs.py`` fails when docs/CLI.md differs from what the
parsers give now, and generates it again in a process that sees another machine.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from ..bench import runner as bench_runner
from .main import build_parser

# Columns of a usage line in the reference.
WIDTH = 100

CHECKOUT = Path(__file__).resolve().parents[2]
TARGET = Path("docs") / "CLI.md"
REGENERATE = "make docs"

HEADER = f"""\
# Command-line reference

Every command and flag of `arcfast`, generated from the argument parsers by
`python -m arcfast.cli.docs --write` (`{REGENERATE}`); edit the parsers' help, not this file
(`tests/test_cli_docs.py` fails when the two differ). How the pieces fit together: the
[README](../README.md) and [USAGE.md](USAGE.md).
"""


# ----------------------------------------------------------------------------------------------
# Commands whose parser is not in build_parser()


def bench_parser() -> argparse.ArgumentParser:
    """The parser of `arcfast bench` (:func:`arcfast.bench.runner.build_parser`)."""
    return bench_runner.build_parser(prog=bench_runner.PROG)


# Subcommand name -> the parser its arguments are handed to (the subcommand's own parser has none).
PASSTHROUGH: dict[str, Callable[[], argparse.ArgumentParser]] = {"bench": bench_parser}


# ----------------------------------------------------------------------------------------------
# Walking the parsers


def commands(parser: argparse.ArgumentParser) -> list:
    """``(parser, one-line help or None)`` of ``parser`` and every subcommand below it, depth first,
    in the order ``--help`` lists them; a pass-through command replaced by the parser it uses."""
    found = [(parser, None)]
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help for a in action._choices_actions}
        seen = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:   # an alias of a command listed already
                continue
            seen.add(id(sub))
            if not sub._actions:
                if name not in PASSTHROUGH:
                    raise ValueError(f"{sub.prog}: its parser takes no arguments at all (add_help=False), so it "
                                     f"hands them to another parser; name that parser in "
                                     f"arcfast.cli.docs.PASSTHROUGH")
                sub = PASSTHROUGH[name]()
            for p, summary in commands(sub):
                found.append((p, helps.get(name) if p is sub else summary))
    return found


# ----------------------------------------------------------------------------------------------
# What depends on the machine


def _machine_dirs() -> list:
    """(directory, how it is written) of the places a default may name, longest first."""
    dirs = {Path.cwd(): ".", Path.home(): "~", Path(tempfile.gettempdir()): "$TMPDIR",
            CHECKOUT / "arcfast": "<arcfast package>", Path(sys.prefix): "<python prefix>"}
    return sorted(((str(d), w) for d, w in dirs.items() if str(d) not in ("", os.sep)),
                  key=lambda x: -len(x[0]))


def stable(text: str) -> tuple:
    """(``text`` with the machine's directories written as above, whether any was)."""
    changed = False
    for d, written in _machine_dirs():
        if d in text:
            text, changed = text.replace(d, written), True
    return text, changed


def default_text(value) -> Optional[str]:
    """The default as the reference shows it; None for no default worth showing."""
    if any(value is x for x in (None, False, argparse.SUPPRESS)) or value in ("", [], ()):
        return None
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=str)
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


# ----------------------------------------------------------------------------------------------
# Markdown


_CODE_SPAN = re.compile(r"(`+)[\s\S]*?\1")
_INDENTED = re.compile(r"^( {4}|\t)")


def _escape(text: str) -> str:
    """Text outside code: the characters Markdown would take for markup (an HTML tag, emphasis)."""
    text = re.sub(r"([\\*<])", r"\\\1", text)
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)


def md(text: str) -> str:
    """``text`` for Markdown: code spans and indented code lines as they are, the rest escaped."""
    lines = []
    for line in text.split("\n"):
        if _INDENTED.match(line):
            lines.append(line)
            continue
        out, pos = [], 0
        for m in _CODE_SPAN.finditer(line):
            out += [_escape(line[pos:m.start()]), m.group(0)]
            pos = m.end()
        lines.append("".join(out) + _escape(line[pos:]))
    return "\n".join(lines)


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


def _choices(action) -> Optional[list]:
    if action.choices is None:
        return None
    if isinstance(action.choices, (set, frozenset, dict)):
        return sorted(action.choices, key=str)
    return list(action.choices)


def _args(action) -> str:
    """What follows the option on the command line, as argparse's own help writes it (``P``,
    ``{a,b}``, ``[X ...]``); choices given as a set or dict in sorted order."""
    if action.nargs == 0:
        return ""
    if action.metavar is None and isinstance(action.choices, (set, frozenset, dict)):
        action = argparse.Action(action.option_strings, action.dest, nargs=action.nargs,
                                 metavar="{" + ",".join(map(str, _choices(action))) + "}")
    formatter = argparse.HelpFormatter("arcfast")
    default = formatter._get_default_metavar_for_optional(action) if action.option_strings \
        else formatter._get_default_metavar_for_positional(action)
    return formatter._format_args(action, default)


# The default _show_defaults appends to a help (as argparse's own BooleanOptionalAction did in older
# Pythons): dropped, the reference states every default in one place.
_DEFAULT_SUFFIX = re.compile(r"\s*\(default: %\(default\)s\)$|^default: %\(default\)s$")


def _switch(action) -> bool:
    """A flag that takes no value (store_true, store_false, store_const, count, ...): its default is
    what holds without it, which the flag's name says; not shown."""
    return action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)


def _shown_default(action) -> Optional[str]:
    if _switch(action):
        return None
    if isinstance(action, argparse.BooleanOptionalAction) and isinstance(action.default, bool):
        return action.option_strings[0 if action.default else 1]   # --color-aug, or --no-color-aug
    return default_text(action.default)


def help_text(action, prog: str) -> tuple:
    """(the help of ``action`` as argparse expands it, less its default, which is returned apart;
    whether either names a directory of this machine)."""
    default = _shown_default(action)
    default, machine = stable(default) if default is not None else (None, False)
    text = _DEFAULT_SUFFIX.sub("", action.help or "")
    params = dict(vars(action), prog=prog)
    for name in list(params):
        if params[name] is argparse.SUPPRESS:
            del params[name]
        elif hasattr(params[name], "__name__"):
            params[name] = params[name].__name__
    if _choices(action) is not None:
        params["choices"] = ", ".join(map(str, _choices(action)))
    params["default"] = default if default is not None else action.default
    text, in_help = stable(text % params if "%" in text else text)
    return text, default, machine or in_help


def flag_line(action, prog: str) -> str:
    """One Markdown list item: the flag, its argument, its default, its help."""
    if action.option_strings:
        name = ", ".join(action.option_strings)
        args = _args(action)
        head = _code(f"{name} {args}" if args else name)
    else:
        head = _code(_args(action))
    text, default, machine = help_text(action, prog)
    facts = []
    choices = _choices(action)
    if choices is not None and action.metavar is not None:
        facts.append("one of " + ", ".join(_code(str(c)) for c in choices))
    if default is not None and f"default: {default}" not in text:
        facts.append(f"default {_code(default)}")
    if machine:
        facts.append("depends on the machine: shown relative to its directory")
    line = f"- {head}"
    if facts:
        line += f" ({'; '.join(facts)})"
    if action.required and action.option_strings:
        line += " (required)"
    if text:
        line += ": " + md(text)
    return line


def usage(parser: argparse.ArgumentParser, width: int = WIDTH) -> str:
    """``usage: ...`` of ``parser``, laid out at ``width`` columns by this module (argparse would
    read the terminal's)."""
    if parser.usage is not None:
        one = parser.usage % dict(prog=parser.prog)
    else:
        formatter = argparse.HelpFormatter(parser.prog, width=10**6)   # one line: no wrapping
        formatter.add_usage(None, parser._actions, parser._mutually_exclusive_groups, prefix="")
        one = re.sub(r"\x1b\[[0-9;]*m", "", formatter.format_help()).strip()
    rest = one[len(parser.prog):].strip() if one.startswith(parser.prog) else one
    parts, depth, word = [], 0, ""
    for ch in rest:   # split at spaces outside [...], (...), {...}
        depth += (ch in "[({") - (ch in "])}")
        if ch == " " and depth == 0:
            parts.append(word)
            word = ""
        else:
            word += ch
    parts = [p for p in parts + [word] if p]
    lead = f"usage: {parser.prog}"
    lines, line, empty = [], lead, True   # empty: no part on this line yet (a long part then stays)
    for part in parts:
        if len(line) + 1 + len(part) > width and not empty:
            lines.append(line)
            line = " " * len(lead)
        line += " " + part
        empty = False
    lines.append(line)
    return "\n".join(lines)


def _anchor(prog: str) -> str:
    """GitHub's anchor of the heading ``## `prog` ``."""
    return re.sub(r"[^a-z0-9 _-]", "", prog.lower()).replace(" ", "-")


def section(parser: argparse.ArgumentParser, summary: Optional[str]) -> list:
    """The Markdown lines of one command."""
    lines = [f"## `{parser.prog}`", ""]
    if summary:
        lines += [md(summary[:1].upper() + summary[1:].rstrip(".") + "."), ""]
    lines += ["```text", usage(parser), "```", ""]
    if parser.description:
        desc = parser.description.strip("\n")
        if "%(prog)" in desc:
            desc = desc % dict(prog=parser.prog)
        lines += [md(desc.rstrip()), ""]
    for group in parser._action_groups:
        shown = [a for a in group._group_actions if a.help is not argparse.SUPPRESS]
        if not shown:
            continue
        lines += [f"### {group.title}", ""]
        if group.description:
            lines += [md(group.description.strip()), ""]
        for action in shown:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                lines.append(f"- {_code(_args(action))}: one of")
                for name, sub in action.choices.items():
                    if name in helps:
                        lines.append(f"  - [`{name}`](#{_anchor(sub.prog)}): {md(helps[name] or '')}")
            else:
                lines.append(flag_line(action, parser.prog))
        lines.append("")
    if parser.epilog:
        lines += [md(parser.epilog.strip()), ""]
    return lines


def reference(parser: Optional[argparse.ArgumentParser] = None) -> str:
    """The whole reference in Markdown, of ``parser`` (default: the `arcfast` command line)."""
    parser = parser if parser is not None else build_parser()
    found = commands(parser)
    lines = [HEADER, "| command | what it does |", "|---|---|"]
    for p, summary in found:
        what = summary if p is not parser else (parser.description or "").strip().split("\n")[0]
        lines.append(f"| [`{p.prog}`](#{_anchor(p.prog)}) | {md(what or '').replace('|', '&#124;')} |")
    lines.append("")
    for p, summary in found:
        lines += section(p, summary)
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------
# python -m arcfast.cli.docs


def target_path() -> Path:
    """docs/CLI.md of the source checkout this package is in."""
    if not (CHECKOUT / "pyproject.toml").is_file() or not (CHECKOUT / "docs").is_dir():
        raise FileNotFoundError(f"{CHECKOUT}: not a source checkout of arcfast (no pyproject.toml and docs/); "
                                f"give the file to write: python -m arcfast.cli.docs PATH")
    return CHECKOUT / TARGET


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m arcfast.cli.docs",
                                 description="Print the command-line reference (docs/CLI.md) in Markdown, "
                                             "or write it.")
    ap.add_argument("path", nargs="?", help="write the reference to this file")
    ap.add_argument("--write", action="store_true", help=f"write {TARGET.as_posix()} of this source checkout")
    args = ap.parse_args(argv)
    text = reference()
    if not args.path and not args.write:
        sys.stdout.write(text)
        return 0
    try:
        path = Path(args.path) if args.path else target_path()
    except FileNotFoundError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
