"""docs/CLI.md, the command-line reference generated from the parsers (arcfast.cli.docs):

- the file in the tree is what the parsers give now (else: `make docs`);
- every flag of every command, `arcfast bench` included, is in it with its default and its help,
  found by walking the parsers here, apart from the generator;
- a flag or a command added to a parser is in the next generation, and a pass-through command the
  generator does not know is refused;
- the text is the same on another machine: another terminal width, core count, home, temporary and
  working directory, hash seed.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from arcfast.bench import runner
from arcfast.cli import docs
from arcfast.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = ROOT / "docs" / "CLI.md"


@pytest.fixture(scope="module")
def reference() -> str:
    return docs.reference()


def test_docs_cli_md_is_what_the_parsers_give(reference):
    assert re.search(r"^docs:.*\n\t\$\(BIN\)/python -m arcfast\.cli\.docs --write$",
                     (ROOT / "Makefile").read_text(), re.M), "the Makefile has no `docs` target"
    written = CLI_MD.read_text(encoding="utf-8") if CLI_MD.is_file() else ""
    if written != reference:
        diff = "".join(list(difflib.unified_diff(written.splitlines(True), reference.splitlines(True),
                                                 "docs/CLI.md", "the parsers now"))[:60])
        pytest.fail("docs/CLI.md is out of date with the command-line parsers; regenerate it with "
                    f"`make docs` (python -m arcfast.cli.docs --write) and commit it.\n{diff}")


# ----------------------------------------------------------------------------------------------
# Every flag, found apart from the generator


def _parsers(parser: argparse.ArgumentParser):
    """(prog, parser) of every command with arguments of its own, walked here."""
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _parsers(sub)


def _sections(text: str) -> dict:
    """prog -> the lines of its section."""
    out = {}
    for chunk in re.split(r"^## ", text, flags=re.M)[1:]:
        head, _, body = chunk.partition("\n")
        out[head.strip("`")] = body.splitlines()
    return out


def _plain(line: str) -> str:
    return re.sub(r"\\([\\*<_])", r"\1", line)


def _line_of(lines: list, option: str) -> str:
    pattern = re.compile(r"^- `[^`]*(?<![\w-])" + re.escape(option) + r"(?![\w-])[^`]*`")
    found = [x for x in lines if pattern.match(x)]
    assert len(found) == 1, (option, found)
    return _plain(found[0])


def _bench_options(capsys) -> set:
    """The options `arcfast bench --help` prints."""
    with pytest.raises(SystemExit):
        runner.main(["--help"])
    return set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", capsys.readouterr().out.split("options:", 1)[1]))


# "(default: X)" at the end of a help, or a help that is only "default: X" (arcfast.cli.args._show_defaults).
APPENDED_DEFAULT = r"\s*\(default: (\(\)|[^()]*)\)$|^default: [^()]*$"


def test_every_flag_of_every_command_is_in_the_reference(reference, capsys):
    sections = _sections(reference)
    checked = 0
    for prog, parser in _parsers(build_parser()):
        if not parser._actions:   # a pass-through: arcfast bench, below
            continue
        assert prog in sections, f"no section for {prog}"
        formatter = argparse.HelpFormatter(prog, width=10**6)
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            if not action.option_strings:
                name = action.metavar or action.dest
                assert any(x.startswith(f"- `{name}") for x in sections[prog]), (prog, name)
                continue
            line = _line_of(sections[prog], action.option_strings[-1])
            assert all(o in line for o in action.option_strings), (prog, line)
            # The help as argparse expands it, less the default it appends, which is in the line too.
            text = re.sub(APPENDED_DEFAULT, "", formatter._expand_help(action)) if action.help else ""
            assert text in line, (prog, text, line)
            if isinstance(action, argparse.BooleanOptionalAction):   # the one of the pair that holds
                assert f"default `{action.option_strings[0 if action.default else 1]}`" in line, line
            elif action.nargs != 0 and not any(action.default is x for x in (None, argparse.SUPPRESS)) and \
                    action.default not in ("", [], ()):
                shown = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) \
                    else str(action.default)
                assert re.search(r"default:? `?" + re.escape(shown), line), (prog, action.default, line)
            elif action.nargs == 0:   # a switch: off unless given, no default shown
                assert "default `" not in line, line
            checked += 1
    bench = sections["arcfast bench"]
    options = _bench_options(capsys)
    assert {"--quick", "-k", "--out", "--set"} <= options
    for option in options:
        _line_of(bench, option)
    assert checked > 100 and "%(" not in reference


# ----------------------------------------------------------------------------------------------
# What the generator picks up, and what it refuses


def _subparsers(parser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_a_flag_or_a_command_added_to_the_parsers_is_in_the_next_generation(reference):
    parser = build_parser()
    sub = _subparsers(parser)
    sub.choices["ttft"].add_argument("--brand-new-flag", type=int, default=7,
                                     help="added after the reference was written, %(default)s by default")
    new = sub.add_parser("frobnicate", help="a command added after the reference was written")
    new.add_argument("--knob", choices=("low", "high"), default="low", help="how much")
    text = docs.reference(parser)
    assert "--brand-new-flag" not in reference and "frobnicate" not in reference
    ttft, frob = _sections(text)["arcfast ttft"], _sections(text)["arcfast frobnicate"]
    assert _line_of(ttft, "--brand-new-flag") == \
        "- `--brand-new-flag BRAND_NEW_FLAG` (default `7`): added after the reference was written, 7 by default"
    assert _line_of(frob, "--knob") == "- `--knob {low,high}` (default `low`): how much"
    assert "[--brand-new-flag BRAND_NEW_FLAG]" in "\n".join(ttft)
    assert "| [`arcfast frobnicate`](#arcfast-frobnicate) | a command added after the reference was written |" in text


def test_a_pass_through_command_the_generator_does_not_know_is_refused():
    parser = build_parser()
    _subparsers(parser).add_parser("mystery", add_help=False, help="hands its arguments elsewhere")
    with pytest.raises(ValueError, match="arcfast mystery: .*PASSTHROUGH"):
        docs.reference(parser)


def test_a_default_in_a_directory_of_this_machine_is_written_relative_to_it():
    p = argparse.ArgumentParser(prog="tool")
    p.add_argument("--cache", default=str(Path.home() / "cache"), help="where (%(default)s)")
    p.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "x"), help="scratch")
    text = docs.reference(p)
    assert str(Path.home()) not in text and tempfile.gettempdir() not in text
    lines = _sections(text)["tool"]
    assert _line_of(lines, "--cache") == ("- `--cache CACHE` (default `~/cache`; depends on the machine: "
                                          "shown relative to its directory): where (~/cache)")
    assert _line_of(lines, "--scratch") == ("- `--scratch SCRATCH` (default `$TMPDIR/x`; depends on the machine: "
                                            "shown relative to its directory): scratch")


def test_usage_lines_are_laid_out_here_not_at_the_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "30")
    lines = docs.usage(_subparsers(build_parser()).choices["ttft"]).splitlines()
    assert lines[0].startswith("usage: arcfast ttft [-h] [--tasks TASKS]")
    assert len(lines) > 5 and max(map(len, lines)) <= docs.WIDTH
    assert all(x.startswith(" " * len("usage: arcfast ttft ") + "[") for x in lines[1:])


def test_the_reference_is_the_same_on_another_machine(reference, tmp_path):
    for d in ("home", "tmp", "cwd"):
        (tmp_path / d).mkdir()
    code = ("import os\n"
            "os.cpu_count = lambda: 977\n"
            "os.sched_getaffinity = lambda pid: set(range(977))\n"
            "import sys\n"
            "from arcfast.cli.docs import reference\n"
            "sys.stdout.write(reference())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS", "LINES")}
    env.update(COLUMNS="33", LINES="10", HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"),
               PYTHONHASHSEED="12345", PYTHONPATH=str(ROOT))
    got = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "cwd", env=env, capture_output=True,
                         text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-3000:]
    assert got.stdout == reference


def test_python_m_arcfast_cli_docs_writes_the_file_it_is_given(reference, tmp_path, capsys):
    assert docs.main([str(tmp_path / "CLI.md")]) == 0
    assert (tmp_path / "CLI.md").read_text(encoding="utf-8") == reference
    assert capsys.readouterr().out == f"wrote {tmp_path / 'CLI.md'}\n"
    assert docs.main([]) == 0 and capsys.readouterr().out == reference
