"""What every `arcfast` subcommand's parser shares: the help formatter that states each default,
``-v``, the flags of the settings ttft, eval and train share (one definition each, defaults from
:class:`arcfast.run.config.RecipeConfig` and its subclasses), and the message for a source where no
task loaded."""
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


# The flags of RecipeConfig's fields, one definition each: field -> (option strings, argparse
# settings but the default). "{command}" in a help is the subcommand's name. The defaults come from
# the command's config (TTFTConfig, FinetuneConfig); a field a --recipe may set defaults to None,
# its engine default stated in the help.
SHARED_FLAGS = {
    "model": (("--model",), dict(help="a local Hugging Face checkpoint directory, the shipped starter model, or a "
                                      "built-in preset (tiny, starter-arch, qwen2.5-0.5b, ...: random weights)")),
    "adapter": (("--adapter",), dict(help="PEFT adapter directory to start from (train: ignored when resuming; "
                                          "with --full merged into the weights first)")),
    "out": (("--out",), dict(help="output directory (default: runs/{command}-<date>-<time>)")),
    "resume": (("--resume",), dict(action="store_true",
                                   help="continue the run in --out: keep the tasks it finished whose task is "
                                        "unchanged (same id, train pairs and test inputs) and run the changed "
                                        "and new ones (ttft, eval), or go on from OUT/checkpoint to the weights "
                                        "an uninterrupted run would reach (train)")),
    "budget": (("--budget",), dict(help="wall time for the whole run from the start of the process, e.g. 11h, "
                                        "30m, 90s")),
    "margin": (("--margin",), dict(help="time kept back from the budget for writing the results, e.g. 30s "
                                        "(default: 3%% of the budget, at least 10s and at most 5m)")),
    "device": (("--device",), dict(help="auto, cpu, cuda or cuda:N")),
    "dtype": (("--dtype",), dict(help="auto, float32, bfloat16 or float16")),
    "seed": (("--seed",), dict(type=int, help="seed of every random choice")),
    "cuda_graphs": (("--cuda-graphs",), dict(action="store_true",
                                             help="replay each training step as a CUDA graph (native LoRA steps on "
                                                  "a GPU; falls back to eager steps, and says why, where it cannot)")),
    "report_to": (("--report-to",), dict(nargs="+", choices=("tensorboard", "wandb", "none"), metavar="TRACKER",
                                         help="also write the metrics (losses, learning rate, tokens/s, each "
                                              "finished task's, the run's) to tensorboard (event files under "
                                              "OUT/tensorboard: tensorboard --logdir OUT) and/or wandb (a W&B "
                                              "run under OUT/wandb, project arcfast; offline unless WANDB_MODE "
                                              "or WANDB_API_KEY is set); pip install 'arcfast[tensorboard]' or "
                                              "'arcfast[wandb]'; none: only OUT/log.jsonl")),
    "rank": (("--rank",), dict(type=int, help="LoRA rank")),
    "alpha": (("--alpha",), dict(type=float, help="LoRA alpha: the update is scaled by alpha/rank "
                                                  "(alpha/sqrt(rank) with --rslora)")),
    "rslora": (("--rslora",), dict(action="store_true",
                                   help="rank-stabilised LoRA: scale by alpha/sqrt(rank) instead of alpha/rank "
                                        "(PEFT's use_rslora), for high ranks such as 256")),
    "tokens": (("--train-tokens",), dict(dest="tokens", type=token_modules, metavar="MODULES",
                                         help="also train the adapter's own rows of the embedding and/or LM head: "
                                              "embed_tokens, lm_head, both (embed_tokens,lm_head) or none; saved "
                                              "in PEFT's format (modules_to_save, or trainable tokens for a full "
                                              "vocabulary)")),
    "embedding_lr": (("--embedding-lr",), dict(type=float, metavar="LR",
                                               help="learning rate of those rows, on the same schedule "
                                                    "(default: --lr)")),
    "lr": (("--lr",), dict(type=float, help="peak learning rate")),
    "steps": (("--steps",), dict(type=int, help="optimizer steps: per task at most (ttft, eval), or the whole "
                                                "schedule (train)")),
    "warmup_ratio": (("--warmup-ratio",), dict(type=float, help="share of the steps the learning rate warms up")),
    "loss_on": (("--loss-on",), dict(help="the tokens that carry loss: the left-out pair's output, or every "
                                          "output of the prompt but the first demonstration's")),
    "objectives": (("--objective",), dict(dest="objective", action="append", metavar="NAME=W",
                                          help="a training objective and its share of the samples, repeatable: "
                                               "output (predict the output), input (generate another input of "
                                               "the task), verify (judge a candidate output: right or a "
                                               "corruption); e.g. --objective output=1 --objective verify=0.5 "
                                               "(default: output only)")),
    "row_len": (("--row-len",), dict(type=int, help="tokens per packed row")),
    "max_len": (("--max-len",), dict(type=int, help="longest prompt in tokens")),
}
# Flags whose default is not the config field's own.
_NO_DEFAULT = {"out", "adapter", "margin", "embedding_lr", "objectives"}


def add_shared_flags(group, names, config, command: str, recipe=(), defaults=None) -> None:
    """Add the flags of RecipeConfig fields ``names`` to ``group``: defaults from ``config`` (an
    instance of the command's config) or ``defaults``; those in ``recipe`` default to None, for a
    --recipe to fill (their engine default stated in the help)."""
    from ..samples.sampling import LOSS_ON

    defaults = defaults or {}
    for name in names:
        flags, kw = SHARED_FLAGS[name]
        kw = dict(kw, help=kw["help"].replace("{command}", command))
        if name == "loss_on":
            kw["choices"] = LOSS_ON
        if name in defaults:
            kw["default"] = defaults[name]
        elif name in recipe:
            kw["default"] = None
            value = getattr(config, name)
            if "default" not in kw["help"]:   # the engine's default, unless the help says it already
                shown = ("none" if value is None or value == () else ("on" if value else "off") if isinstance(value, bool)
                         else f"{value:g}" if isinstance(value, float) else value)
                kw["help"] += f" (default: {shown})"
        elif name not in _NO_DEFAULT:
            kw["default"] = getattr(config, name)
            if name == "tokens" and kw["default"] == ():
                kw["default"] = "none"   # shown as the flag takes it; parsed to ()
        else:
            kw["default"] = None
        if kw.get("action") == "store_true" and kw["default"] is False:
            kw.pop("default")
        group.add_argument(*flags, **kw)


def budget_and_margin(args) -> tuple:
    """(budget, margin) in seconds from --budget and --margin: budget None where no --budget was
    given (train), margin None for the default margin; a margin that leaves nothing is refused."""
    from ..budget.clock import parse_duration

    budget = parse_duration(args.budget) if args.budget else None
    if args.margin is None:
        return budget, None
    if budget is None:
        raise ValueError(f"--margin {args.margin} needs a --budget to keep it from")
    margin = parse_duration(args.margin)
    if margin >= budget:
        raise ValueError(f"--margin {args.margin} leaves nothing of --budget {args.budget}")
    return budget, margin


def deadline_of(args, cfg):
    """The Deadline of ``cfg``'s budget and margin, counted from when `arcfast.cli.main` started
    (imports and loading included); None for a run without a budget."""
    from ..budget.clock import Deadline

    if cfg.budget is None:
        return None
    return Deadline(cfg.budget, margin=cfg.margin, start=getattr(args, "started", None))


def add_quiet(p) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
