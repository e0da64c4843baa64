"""What a new user meets first: the progress display, the summary, the help, the files' modes."""
import argparse
import io
import json
import os
import stat

import pytest

from arcfast.cli import main
from arcfast.cli.main import build_parser
from arcfast.run.progress import Progress
from arcfast.answers.submission import validate_submission

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["--model", "tiny", "--steps", "2", "--predictions", "2", "--max-new-tokens", "3",
       "--row-len", "4096", "--max-len", "4096"]


# -- progress ---------------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_plain_progress_is_lines_without_carriage_returns():
    out, clock = io.StringIO(), Clock()
    p = Progress(4, desc="ttft", unit="tasks", stream=out, tty=False, plain_every=30.0, clock=clock)
    p.status("group 1/2 · train step 1/50", force=True)
    for step in range(2, 51):
        clock.t += 1.0
        p.status(f"group 1/2 · train step {step}/50")   # one line per 30 s at most
    p.update(2, text="group 1/2 done", force=True)
    p.close()
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and "" not in lines[:-1] and "\r" not in out.getvalue()
    assert lines[:-1] == ["ttft: 0/4 tasks · group 1/2 · train step 1/50",
                          "ttft: 0/4 tasks · group 1/2 · train step 31/50",
                          "ttft: 2/4 tasks · group 1/2 done"]


def test_plain_progress_of_many_steps_prints_a_line_now_and_then_and_at_the_end():
    out, clock = io.StringIO(), Clock()
    p = Progress(100, desc="train", unit="steps", stream=out, tty=False, plain_every=30.0, clock=clock)
    for _ in range(100):
        clock.t += 1.0
        p.update(1, text="loss 0.5")
    assert out.getvalue().splitlines() == ["train: 1/100 steps · loss 0.5", "train: 31/100 steps · loss 0.5",
                                           "train: 61/100 steps · loss 0.5", "train: 91/100 steps · loss 0.5",
                                           "train: 100/100 steps · loss 0.5"]


def test_terminal_progress_shows_the_step_inside_a_group():
    out = io.StringIO()
    p = Progress(4, desc="ttft", unit="tasks", stream=out, tty=True)
    p.status("group 1/2 · train step 7/50", force=True)
    assert "train step 7/50" in out.getvalue() and "0/4" in out.getvalue()
    p.update(2, text="12 tok/s")
    p.close()
    assert "2/4" in out.getvalue() and "12 tok/s" in out.getvalue()


def test_ttft_progress_in_a_pipe_names_training_and_inference(tmp_path, capsys):
    assert main(["ttft", "--tasks", "arc1:eval[:2]", "--budget", "60s", "--out", str(tmp_path / "r"), *RUN]) == 0
    err = capsys.readouterr().err     # captured: not a terminal
    lines = [x for x in err.split("\n") if x.startswith("ttft: ")]
    assert "\r" not in err and "" not in err.split("\n")[:-1]
    assert any("train step 1/" in x for x in lines) and any("predicting" in x for x in lines)
    assert lines[-1].startswith("ttft: 2/2 tasks")


# -- the summary -----------------------------------------------------------------------------------

def test_the_summary_counts_only_parsed_answers_and_warns_about_random_weights_first(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["ttft", "--tasks", "arc1:eval[:2]", "--budget", "60s", "--out", str(out), "-q", *RUN]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith("note: --model tiny is a built-in architecture with random weights")
    run = json.loads((out / "run.json").read_text())
    recs = [json.loads(p.read_text()) for p in (out / "tasks").glob("*.json")]
    parsed = sum(1 for r in recs if any(r["attempts"]))
    assert run["answered"] == parsed
    assert f"{parsed} answered by the model" in text
    # Three new tokens cannot make a grid: nothing parsed, and the summary says so.
    assert parsed == 0 and all(r["attempts"] == [[]] * len(r["votes"]) for r in recs)


# -- adapters and files ----------------------------------------------------------------------------

def test_save_adapters_none_writes_answers_only(tmp_path):
    out = tmp_path / "r"
    assert main(["ttft", "--tasks", "arc1:eval[:2]", "--budget", "60s", "--out", str(out), "-q",
                 "--save-adapters", "none", *RUN]) == 0
    assert not (out / "adapters").exists() or not any((out / "adapters").iterdir())
    from arcfast import load_tasks

    validate_submission(out / "submission.json", load_tasks("arc1:eval[:2]"))
    assert all(json.loads(p.read_text())["steps"] == 2 for p in (out / "tasks").glob("*.json"))


def test_results_are_written_with_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        out = tmp_path / "r"
        assert main(["ttft", "--tasks", "arc1:eval[:1]", "--budget", "60s", "--out", str(out), "-q", *RUN]) == 0
    finally:
        os.umask(old)
    files = [out / "submission.json", out / "run.json", out / "report.md", *(out / "tasks").glob("*.json")]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f
    for d in (out / "adapters").iterdir():
        assert stat.S_IMODE(d.stat().st_mode) == 0o750, d


# -- the command line ------------------------------------------------------------------------------

def _sub(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["ttft", "eval", "train", "validate"])
def test_help_shows_every_default(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")   # one line per option
    parser = _sub(command)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    lines = capsys.readouterr().out.splitlines()
    checked = 0
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if any(action.default is x for x in (None, False, argparse.SUPPRESS)):
            continue
        # The option's line, and the next one where a long option puts its help.
        i = next(i for i, x in enumerate(lines) if x.lstrip().startswith(", ".join(action.option_strings)))
        entry = lines[i] + (lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].lstrip().startswith("-") else "")
        assert f"default: {action.default}" in entry, entry
        checked += 1
    assert checked >= 1


def test_ttft_and_eval_share_their_flags():
    ttft = {o for a in _sub("ttft")._actions for o in a.option_strings}
    evl = {o for a in _sub("eval")._actions for o in a.option_strings}
    assert evl - ttft == {"--ttft"} and ttft <= evl
    args = build_parser().parse_args(["eval", "--tasks", "arc1:eval[:1]", "--ttft", "--backend", "native", "--lr",
                                      "3e-4", "--alpha", "16", "--samples-per-task", "2", "--row-len", "2048"])
    from arcfast.cli.run import _run_config

    cfg = _run_config(args, "eval")
    assert (cfg.train, cfg.backend, cfg.lr, cfg.alpha, cfg.samples_per_task, cfg.row_len) == \
        (True, "native", 3e-4, 16.0, 2, 2048)
    assert _run_config(build_parser().parse_args(["eval", "--tasks", "x"]), "eval").train is False


def test_verbose_before_or_after_the_subcommand():
    parse = build_parser().parse_args
    assert parse(["-v", "validate", "x"]).verbose is True
    assert parse(["validate", "x", "-v"]).verbose is True
    assert parse(["ttft", "--verbose"]).verbose is True
    assert parse(["validate", "x"]).verbose is False


def test_version_and_info(capsys):
    from arcfast import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"arcfast {__version__}"
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    import torch

    assert f"torch {torch.__version__}" in text and "transformers" in text and "peft" in text
    assert "kernels:" in text and "backend native" in text


def test_the_shared_settings_have_one_flag_each_in_every_command():
    """ttft, eval and train take the settings they share (RecipeConfig) through the same flags,
    defined once (arcfast.cli.args.SHARED_FLAGS), with each command's own defaults."""
    import dataclasses

    from arcfast.cli.args import SHARED_FLAGS
    from arcfast.run.config import RecipeConfig, TTFTConfig
    from arcfast.run.train import FinetuneConfig

    fields = {f.name for f in dataclasses.fields(RecipeConfig)}
    assert set(SHARED_FLAGS) <= fields
    # Every shared field but ttft's steering ones has a flag; progress is -q.
    assert fields - set(SHARED_FLAGS) == {"progress"}
    via_recipe = {"rank", "alpha", "rslora", "tokens", "embedding_lr", "lr", "steps"}
    for command, config in (("ttft", TTFTConfig()), ("eval", TTFTConfig()), ("train", FinetuneConfig())):
        actions = {a.dest: a for a in _sub(command)._actions}
        for name, (flags, kw) in SHARED_FLAGS.items():
            if name == "warmup_ratio" and command != "train":
                continue   # ttft/eval take the recipe's warm-up
            a = actions[kw.get("dest", name)]
            assert tuple(a.option_strings) == flags, (command, name)
            if name in ("budget", "out", "adapter", "margin", "embedding_lr", "objectives"):
                continue   # a duration string, or no default of the field's own
            want = None if (command != "train" and name in via_recipe) else getattr(config, name)
            if name == "tokens" and want == ():
                want = "none"
            assert a.default == want, (command, name, a.default, want)


def test_train_takes_margin_and_refuses_one_past_the_budget(tmp_path):
    from arcfast.cli.train import config_from_args

    parse = lambda *argv: build_parser().parse_args(["train", "--out", str(tmp_path), *argv])  # noqa: E731
    cfg = config_from_args(parse("--budget", "10m", "--margin", "30s"))
    assert (cfg.budget, cfg.margin) == (600.0, 30.0)
    assert config_from_args(parse()).margin is None
    with pytest.raises(ValueError, match="--margin 20m"):
        config_from_args(parse("--budget", "10m", "--margin", "20m"))
    # The shared settings are checked once, for train as for ttft.
    with pytest.raises(ValueError, match="rank must be >= 1"):
        config_from_args(parse("--rank", "0"))
