"""The configuration of the runs: :class:`RecipeConfig`, the settings `arcfast ttft`, `arcfast eval`
and `arcfast train` share (defined once, checked once, turned into the LoRA and trainer configs in
one place), and :class:`TTFTConfig`, a ttft/eval run; `arcfast train`'s
:class:`arcfast.run.train.FinetuneConfig` derives from the same base. The command line's flags are
made from these fields and defaults (:mod:`arcfast.cli.args`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..models import shipped_model
from .tracking import check_installed, report_to_names

# The embedded default: what `arcfast ttft` with no arguments runs (CPU, tiny model, seconds).
DEFAULT_TASKS = "arc1:eval[:6]"


# The starter model where it is installed (arcfast/models/starter/); the random-weight tiny preset
# otherwise.
DEFAULT_MODEL = "starter" if shipped_model("starter") is not None else "tiny"


DEFAULT_BUDGET = "90s"


@dataclass
class RecipeConfig:
    """What ttft, eval and train share: the model, where the run writes, its budget, the engine, and
    the LoRA and optimisation recipe. A subclass changes a default by declaring the field again."""
    model: str = DEFAULT_MODEL
    adapter: Optional[str] = None          # PEFT adapter to start from
    out: str = "runs/ttft"
    budget: Optional[float] = 90.0         # seconds, the whole run (None: no limit)
    margin: Optional[float] = None         # safety margin in seconds (default: Deadline's)
    resume: bool = False
    progress: bool = True
    device: str = "auto"                   # auto | cpu | cuda
    dtype: str = "auto"                    # auto | float32 | bfloat16 | float16
    seed: int = 0
    cuda_graphs: bool = False              # replay training steps as CUDA graphs (native backend, GPU)
    report_to: tuple = ()                  # "tensorboard" / "wandb": the metrics also written there (run/tracking)
    # LoRA and optimisation
    rank: int = 32
    alpha: float = 64.0
    rslora: bool = False                   # LoRA scaling alpha / sqrt(rank) instead of alpha / rank
    tokens: tuple = ()                     # "embed_tokens" / "lm_head": their rows trained per adapter too
    embedding_lr: Optional[float] = None   # those rows' learning rate (None: lr)
    lr: float = 1e-4
    steps: int = 100                       # optimizer steps (per task for ttft, in all for train)
    warmup_ratio: float = 0.1
    # the training samples
    loss_on: str = "target"                # target | outputs: also every demonstration output but the first
    objectives: tuple = (("output", 1.0),)  # (name, weight): shares of the samples (arcfast.samples.objectives)
    row_len: int = 8192                    # tokens per packed row
    max_len: int = 8192                    # longest training prompt

    def check_recipe(self) -> None:
        """ValueError naming the field for a shared setting that would otherwise run wrongly."""
        from ..samples.sampling import LOSS_ON

        self.check_at_least((("steps", 0, "optimizer steps; 0: no training"), ("rank", 1, "LoRA rank"),
                             ("row_len", 1, "tokens per packed row"), ("max_len", 1, "tokens in the longest prompt")))
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {LOSS_ON}, not {self.loss_on!r}")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr}")
        if not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be a finite number, got {self.alpha}")
        if self.budget is not None and not (math.isfinite(self.budget) and self.budget > 0):
            raise ValueError(f"budget must be a positive number of seconds, got {self.budget}")
        self.report_to = report_to_names(self.report_to)
        check_installed(self.report_to)   # before any work: a tracker's package missing is refused

    def check_at_least(self, bounds) -> None:
        """ValueError for the first field of ``bounds`` ((name, lowest value, what it is)) below its bound."""
        for name, low, what in bounds:
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low} ({what}), got {getattr(self, name)}")

    def lora_config(self):
        """The :class:`arcfast.lora.multi.LoRAConfig` of this recipe."""
        from ..lora.multi import LoRAConfig

        return LoRAConfig(r=self.rank, alpha=self.alpha, rslora=self.rslora, tokens=self.tokens)

    def train_config(self, **more):
        """The :class:`arcfast.train.trainer.TrainConfig` of this recipe (``more``: fields only one
        command sets, e.g. train's schedule and weight decay)."""
        from ..train.trainer import TrainConfig

        return TrainConfig(lr=self.lr, steps=self.steps, warmup_ratio=self.warmup_ratio, cuda_graphs=self.cuda_graphs,
                           embedding_lr=self.embedding_lr, **more)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


@dataclass
class TTFTConfig(RecipeConfig):
    """A run of `arcfast ttft` (or `arcfast eval`): the tasks, the workers, the per-task recipe's
    sampling and batching, and inference."""
    tasks: str = DEFAULT_TASKS
    solutions: Optional[str] = None
    backend: str = "auto"                  # auto | native | hf | unsloth
    recipe: Optional[str] = None           # the named recipe the fields below came from (arcfast.run.recipes)
    # with several workers (torchrun, --workers): "queue" (tasks pulled from a shared queue, longest
    # first; arcfast.run.queue) or "static" (worker r takes every world-th task)
    sharding: str = "queue"
    lease_s: float = 120.0                 # queue: a worker silent this long has its task handed out again
    max_task_seconds: Optional[float] = None  # a group's training stops so that training and its
                                           # inference fit this many seconds (NVARC: 1,200 per task)
    # LoRA and optimisation (the recipe per task)
    samples_per_task: int = 1              # samples of every task in each step
    # the training samples (arcfast.samples.sampling, arcfast.arc.augment)
    geometric_aug: bool = True             # a dihedral transform drawn per sample (else identity only)
    color_aug: bool = True                 # a colour permutation drawn per sample
    keep_zero_prob: float = 0.9            # probability that such a permutation keeps colour 0
    max_demos: int = 0                     # demonstrations per sample at most (0: every other train pair)
    swap_bug: bool = False                 # ablation only: the last train pair is never a target
    # batching
    tasks_per_group: int = 0               # 0: 8 on the CPU, 32 on a GPU
    # inference
    predictions: int = 8                   # per test input
    max_new_tokens: Optional[int] = None
    search: str = "greedy"                 # greedy | sample | dfs: how each augmented prompt is decoded
    min_prob: float = 0.1                  # dfs: every completion of probability >= min_prob
    max_candidates: Optional[int] = None   # dfs: completions per prompt at most (None: never cut)
    temperature: float = 1.0               # sample: softmax temperature
    select: Optional[str] = None           # vote | poe | nvarc (default: poe with rescore > 0, else vote)
    rescore: Optional[int] = None          # M scoring augmentations (default: 8 for poe and nvarc, else 0: off)
    rescore_top: int = 8                   # how many voted candidates per test input are scored
    verify: Optional[int] = None           # K verifications per candidate (default: 8 with a verify selector
                                           # or the verify objective, else 0: off)
    train: bool = True                     # False: predict with the base model / --adapter only
    # bookkeeping
    save_adapters: str = "all"             # all | none: write each task's adapter under adapters/

    def __post_init__(self):
        # Each refused value would otherwise run: all-fallback answers, silent defaults or a crash mid-run.
        if self.budget is None:
            raise ValueError("a ttft/eval run needs a budget (seconds)")
        self.check_recipe()
        self.check_at_least((("predictions", 1, "predictions per test input"),
                             ("samples_per_task", 1, "samples of each task in every step"),
                             ("tasks_per_group", 0, "tasks per packed batch; 0: 8 on the CPU, 32 on a GPU"),
                             ("max_demos", 0, "demonstrations per sample; 0: every other train pair")))

        from .recipes import recipe_fields

        recipe_fields(self.recipe)   # an unknown name is refused, naming the recipes
        if self.sharding not in ("queue", "static"):
            raise ValueError(f"sharding must be queue or static, not {self.sharding!r}")
        if self.max_task_seconds is not None and not self.max_task_seconds > 0:
            raise ValueError(f"max_task_seconds must be > 0, got {self.max_task_seconds}")
        if not self.lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {self.lease_s}")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1 (or unset: never cut), got {self.max_candidates}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (or unset: from the 30x30 size limit), "
                             f"got {self.max_new_tokens}")
        if not 0.0 <= self.keep_zero_prob <= 1.0:
            raise ValueError(f"keep_zero_prob must lie in [0, 1], got {self.keep_zero_prob}")
        if self.save_adapters not in ("all", "none"):
            raise ValueError(f"save_adapters must be 'all' or 'none', not {self.save_adapters!r}")
        from ..answers.select import SCORED, VERIFIED, check_selector
        from ..infer.search import SEARCHES

        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}, not {self.search!r}")
        if not 0.0 < self.min_prob <= 1.0:
            raise ValueError(f"min_prob must be in (0, 1] (a completion's probability), got {self.min_prob}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")
        if self.rescore is not None and self.rescore < 0:
            raise ValueError(f"rescore must be >= 0 augmentations (0: off), got {self.rescore}")
        if self.select is None:
            self.select = "poe" if self.rescore else "vote"
        check_selector(self.select)
        from ..samples.objectives import parse_objectives

        obj = self.objectives
        strings = isinstance(obj, str) or all(isinstance(x, str) for x in obj)
        self.objectives = parse_objectives(obj if strings else dict(obj))
        trains_verify = dict(self.objectives).get("verify", 0.0) > 0
        if self.verify is None:
            self.verify = 8 if self.select in VERIFIED or trains_verify else 0
        if self.verify < 0:
            raise ValueError(f"verify must be >= 0 verifications per candidate (0: off), got {self.verify}")
        if self.select in VERIFIED and self.verify == 0:
            raise ValueError(f"select {self.select!r} ranks by verdicts: verify must be >= 1 (default 8), got 0")
        if self.rescore is None:
            self.rescore = 8 if self.select in SCORED else 0
        if self.select in SCORED and self.rescore == 0:
            raise ValueError(f"select {self.select!r} ranks by scores under M augmentations: rescore must be "
                             f">= 1 (default 8), got 0")
        if self.rescore_top < 2:
            raise ValueError(f"rescore_top must be >= 2 (re-ranking one candidate changes nothing), "
                             f"got {self.rescore_top}")

    def sample_config(self):
        """The :class:`arcfast.samples.sampling.SampleConfig` of this recipe's training samples."""
        from ..samples.sampling import SampleConfig

        return SampleConfig(max_len=min(self.max_len, self.row_len), loss_on=self.loss_on,
                            objectives=self.objectives, max_demos=self.max_demos, swap_bug=self.swap_bug)

    def augment_config(self):
        """The :class:`arcfast.arc.augment.AugmentConfig` of this recipe's training samples."""
        from ..arc.augment import N_TRANSFORMS, AugmentConfig

        return AugmentConfig(transforms=tuple(range(N_TRANSFORMS)) if self.geometric_aug else (0,),
                             permute_colors=self.color_aug, keep_zero_prob=self.keep_zero_prob)

    @property
    def needs_objective_ids(self) -> bool:
        """Whether the model needs the objectives' ids (verify objective, or verification)."""
        from ..samples.objectives import NEEDS_OBJECTIVE_IDS

        return self.verify > 0 or any(w > 0 and n in NEEDS_OBJECTIVE_IDS for n, w in self.objectives)
