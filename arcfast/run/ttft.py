"""`arcfast ttft`: test-time fine-tuning of a whole task set inside a time budget.

What a run does, top to bottom (:func:`run_ttft`):

1. load the tasks (bad ones are reported and skipped; they still get a fallback answer), start
   ``submission.json`` with a fallback for every test input, and load the model;
2. split the tasks into groups (one packed multi-adapter batch per step trains every task of a
   group; the one-task-at-a-time backends use groups of one);
3. for each group: ask the planner how many steps fit, train fresh adapters (or continue from
   ``--adapter``), save each task's adapter in PEFT format, predict its test outputs under test-time
   augmentations with its adapter (greedy, sampled or depth-first search: ``--search``,
   arcfast.infer.search), vote, optionally score the top candidates under other augmentations
   (``--rescore``, arcfast.infer.rescore), select the two submitted (``--select``, arcfast.answers.select), and
   update the submission and the report;
4. finish before the deadline: the planner (arcfast.budget.steps.StepPlanner) keeps time for every
   remaining group's inference and a safety margin, and limits each group's training to its share
   of the time; no step starts that is predicted not to end in it, and each runs through the
   planner's gate (arcfast.budget.steps.StepGate) in micro-batches, abandoned whole (nothing applied,
   ``step_abandoned`` logged) when its rest would not fit; generation and re-scoring are planned
   from their measured per-step times and stop inside a batch at the deadline, keeping what
   finished. The summary says what the budget cut (``untrained``, ``steps_abandoned``) and what
   could not be written (``adapters_not_saved``, ``results_not_written``). A task with fewer than two train pairs is
   predicted untrained in a group of its own; a group that gets no steps is predicted with the base
   (or pretrained) adapter, and a group that gets no time at all keeps its fallback answers.

A group that fails does not end the run. Out of memory (a GPU smaller than the group needs) halves
the group and every group after it, down to one task, and logs ``oom_split``; any other error leaves the group's
tasks with their fallback answers, logs ``group_failed`` and lists them under ``failed`` in
``run.json``; their results are not written, so ``--resume`` tries them again.

Everything finished is on disk as soon as it is finished: adapters (``adapters/<name>/``),
per-task results (``tasks/<name>.json``), ``submission.json``, the report and a JSON-lines log.
``<name>`` is a safe, reversible encoding of the task id (arcfast.run.outdir): no id can reach outside
``--out``. A run started again with ``--resume`` keeps every task whose result is already written
for the same task (its fingerprint: id, train pairs, test inputs) and runs the rest.

Multi-GPU: under ``torchrun --nproc_per_node N`` (or ``arcfast ttft --workers N``, which starts the
same N workers on one machine) the ranks pull groups of tasks from one queue in the rendezvous
store (:mod:`arcfast.run.queue`; each claim at most an even share of the tasks not yet handed out,
longest first, the leases renewed while a group trains and predicts) and write their answers under
``parts/`` and ``tasks/``; rank 0, once every task is done, merges them into ``submission.json``
and its summary speaks for the whole run. ``sharding="static"`` gives rank r every N-th task.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shlex
import sys
import time
import zlib
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from ..answers.metrics import score_task
from ..arc.task import id_bytes
from ..budget.clock import Deadline, format_duration
from ..budget.steps import StepAbandoned, StepPlanner
from ..files import write_json
from ..runtime import device as _device, dist as _dist, dtype as _dtype, fast_paths_off
from .answer import GroupInference
from .config import TTFTConfig
from .html.page import write_html_in_budget
from .outdir import OutDir
from .records import TaskRun, read_task_record, read_task_records, write_task_record
from .report import RunReport, TaskResult, task_result
from .tracking import open_log

# Seconds of the budget (margin included) that must be left for the report's plot to be drawn.
PLOT_SECONDS = 3.0

log = logging.getLogger("arcfast.run.ttft")

# How a task's error begins when its adapter could not be written (its answers stand).
ADAPTER_NOT_SAVED = "saving adapter: "
# The verification augmentations' seed, apart from the prediction's (seed) and re-scoring's (seed + 1).


# ----------------------------------------------------------------------------------------------
# helpers

def _task_seed(seed: int, task_id: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(id_bytes(task_id))) & 0x7FFFFFFF


def _trainable(task) -> bool:
    """Whether leave-one-out samples can be drawn from ``task`` (a target and a demonstration)."""
    return len(task.train) >= 2


def _groups(tasks, size: int) -> list:
    """``tasks`` in groups of ``size``, the trainable ones first: leave-one-out training needs a
    target and a demonstration, so a task with one train pair is predicted untrained, in groups of
    its own, and never holds back another task."""
    trainable = [t for t in tasks if _trainable(t)]
    alone = [t for t in tasks if not _trainable(t)]
    return [g[i:i + size] for g in (trainable, alone) for i in range(0, len(g), size)]


def _out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


# ----------------------------------------------------------------------------------------------
# the run

class TTFTRun:
    """One `arcfast ttft` run. ``run()`` returns the summary dict also written to ``run.json``."""

    def __init__(self, cfg: TTFTConfig, deadline: Optional[Deadline] = None, command: Optional[str] = None):
        self.tq = None   # the shared task queue of a multi-worker run (see run)
        self.others: dict = {}   # rank 0 of several workers: the other workers' results, once merged
        self.cfg = cfg
        self.deadline = deadline or Deadline(cfg.budget, margin=cfg.margin)
        self.out = cfg.out_dir
        self.paths = OutDir(self.out)
        self.rank, self.world = _dist()
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = open_log(self.out / ("log.jsonl" if self.world == 1 else f"log.rank{self.rank}.jsonl"), cfg)
        self.results: dict[str, TaskRun] = {}
        # The command line, as report.html shows it (default: this process's).
        self.command = command if command is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self.device_name = ""
        self.progress = None             # the progress display (rank 0, unless quiet)
        self._where = ""                 # which group runs, for the progress display
        self.group_index = 0             # groups started so far: the group of the log's step events
        self.inference = None            # the GroupInference of the run's model (see run)
        self.slot_of: dict = {}          # task id -> its adapter's slot in the backend (this group)
        self.steps_abandoned = 0         # training steps stopped part way by the deadline
        self.not_written: dict = {}
        self._paths_logged = set(fast_paths_off())   # switched off before this run: said then      # task id -> why its tasks/<id>.json could not be written

    # -- setup ----------------------------------------------------------------------------------
    def load_tasks(self):
        """(tasks, problems, unloadable): the tasks that loaded, every problem found, and the ids
        of the tasks that could not be loaded with what is known of their test inputs (they keep
        fallback answers in the submission)."""
        from ..arc.loading import load_tasks, skipped_tasks

        problems: list = []
        tasks = load_tasks(self.cfg.tasks, solutions=self.cfg.solutions, on_error="skip", problems=problems)
        for p in problems:
            log.warning("%s", p)
            self.log(event="task_problem", message=str(p))
        unloadable = skipped_tasks(problems, tasks)
        if not tasks and not unloadable:
            raise ValueError(f"{self.cfg.tasks}: no task could be loaded"
                             + (f" ({len(problems)} problems, first: {problems[0]})" if problems else ""))
        return tasks, problems, unloadable

    def load_model(self):
        from ..model.checkpoint import load_model

        device = _device(self.cfg.device)
        dtype = _dtype(self.cfg.dtype, device)
        model = load_model(self.cfg.model, dtype=dtype, device=device)
        if self.cfg.needs_objective_ids and not model.config.has_objective_ids:
            from ..model.decoder import grow_vocab

            grow_vocab(model)   # the same rows every time: adapters trained on them stay valid
            self.log(event="grow_vocab", vocab_size=model.config.vocab_size,
                     reason="the verify objective and verification use ids 16-19; the model had none")
        model.eval()
        return model

    def make_backend(self, model, n_adapters: int):
        from ..train.backends import make_backend, select_backend

        cls, reason = select_backend(self.cfg.backend)
        lora_cfg, train_cfg = self.cfg.lora_config(), self.cfg.train_config()
        n = min(n_adapters, cls.max_adapters)
        backend = make_backend(cls.name, model, lora_cfg, train_cfg, n_adapters=n)
        return backend, lora_cfg, reason

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> dict:
        import torch

        from ..answers.submission import SubmissionWriter

        cfg = self.cfg
        if self.rank == 0:
            # Temporary files of an earlier run that was killed mid-write; ours are all newer.
            for p in self.paths.remove_stale_temporaries(older_than=time.time() - self.deadline.elapsed()):
                self.log(event="removed_stale_temporary", path=str(p))
        tasks, problems, unloadable = self.load_tasks()
        self.unloadable = unloadable
        self.tq = self._task_queue(tasks)
        # A queue worker's tasks are the ones it is handed: every task may be its, so its part of
        # the submission starts with every fallback answer.
        mine = tasks if self.tq is not None else tasks[self.rank::self.world]
        part = self.paths.submission if self.world == 1 else self.paths.part(self.rank)
        # The fallback answers go to disk before anything else can fail.
        self.submission = SubmissionWriter(part, mine, unloadable=unloadable if self.world == 1 else None)
        if self.world > 1 and self.rank == 0:
            SubmissionWriter(self.paths.submission, tasks, unloadable=unloadable)
        self.report = RunReport(title=f"arcfast ttft: {cfg.tasks}", meta={"config": asdict(cfg)})

        model = self.load_model()
        gpu = model.device.type == "cuda"
        self.device_name = f"{model.device} ({torch.cuda.get_device_name(model.device)})" if gpu else str(model.device)
        # Per-task adapters are for inference, which runs in the model's dtype: a bf16 model's
        # adapters are saved in bf16 (35 MB instead of 70 for Qwen2.5-0.5B at r=32; 400 tasks: 14 GB).
        self.adapter_dtype = model.dtype if model.dtype in (torch.bfloat16, torch.float16) else None
        group_size = cfg.tasks_per_group or (32 if gpu else 8)
        backend, lora_cfg, reason = self.make_backend(model, group_size)
        group_size = backend.n_adapters
        steps_how = f", steps: {backend.graph_status}" if cfg.cuda_graphs and hasattr(backend, "graph_status") else ""
        msg = (f"backend {backend.name} ({reason}{steps_how}); model {cfg.model} on {model.device} {model.dtype}; "
               f"{len(mine)} tasks in groups of {group_size}; budget {format_duration(cfg.budget)}")
        log.info(msg)
        self.log(event="start", message=msg, rank=self.rank, world=self.world, tasks=len(mine),
                 budget=self.deadline.budget, margin=self.deadline.margin,
                 elapsed=round(self.deadline.elapsed(), 3), config=asdict(cfg))
        if cfg.recipe:
            from .recipes import RECIPES

            self.log(event="recipe", name=cfg.recipe, recipe=RECIPES[cfg.recipe],
                     used={k: getattr(cfg, k) for k in RECIPES[cfg.recipe]})
        if self.cfg.progress and self.rank == 0:
            print(msg, flush=True)
        pretrained = None
        if cfg.adapter:
            from ..lora.adapters import load_adapter_for

            # Read once, for every group.
            pretrained = load_adapter_for(cfg.adapter, lora_cfg, backend.peft_token_ids())

        todo = self._resume(mine, tasks) if cfg.resume else list(mine)
        if self.tq is not None:
            self._todo = {t.id for t in todo}
            by_id = {t.id: t for t in tasks}
            groups = []   # claimed from the queue as the run goes
            planned = [group_size] * max(1, math.ceil(len(todo) / self.world / group_size))
        else:
            groups = _groups(todo, group_size)
            planned = [len(g) for g in groups]
        # Until a group's inference has been timed, a third of the time left is kept for it.
        planner = StepPlanner(self.deadline, max_steps=cfg.steps, groups=planned, inference_share=1 / 3)

        self.progress = self._progress(len(mine), len(mine) - len(todo))
        self.inference = GroupInference(cfg, model, self.deadline, self.log, self._status)
        queue = deque(groups)
        while True:
            if not queue and self.tq is not None:
                claimed = self._claim(by_id, group_size)
                if not claimed:
                    break
                queue.extend(_groups(claimed, group_size))
                # This worker's share of the tasks not yet handed out, as groups after these.
                rest = math.ceil(self.tq.remaining() / self.world / group_size)
                planner.plan([len(g) for g in queue] + [group_size] * rest)
            if not queue:
                break
            group = queue.popleft()
            self._where = f"group {planner.groups_done + 1}/{planner.groups_done + 1 + len(queue)}"
            if self.deadline.expired():
                self.log(event="out_of_time", tasks_left=len(group) + sum(len(g) for g in queue))
                break
            steps = planner.steps_for_next_group() if cfg.train and _trainable(group[0]) else 0
            t_group = time.perf_counter()
            self.group_index += 1
            # The run's time line (report.html): each group's phases, in seconds of the budget.
            phases = {"start": round(self.deadline.elapsed(), 3)}
            self.log(event="group_start", group=self.group_index, tasks=[t.id for t in group],
                     elapsed=phases["start"])
            try:
                with self.tq.heartbeat() if self.tq is not None else contextlib.nullcontext():
                    runs = self._train_group(backend, group, steps, planner, pretrained, lora_cfg)
                    t_inf = time.perf_counter()
                    phases["train"] = round(t_inf - t_group, 3)
                    self.inference.run(backend, group, runs, planner, self.slot_of)
                inference_s = time.perf_counter() - t_inf
                phases.update({k: round(v, 3) for k, v in self.inference.phases.items()})
                planner.record_inference(inference_s, len(group))
                failed = False
            except Exception as e:   # one group's failure must not end the run
                backend.recover()
                self.inference.decoder.reset()   # its generator's buffers may be what ran out
                if _out_of_memory(e) and len(group) > 1:
                    # Every group still queued is cut to the new size too: each would fail alike.
                    half = (len(group) + 1) // 2
                    queue = deque(g[i:i + half] for g in [group, *queue] for i in range(0, len(g), half))
                    planner.plan([len(g) for g in queue])   # every reservation follows the new groups
                    self.log(event="oom_split", tasks=[t.id for t in group], tasks_per_group=half,
                             error=str(e).splitlines()[0][:300])
                    log.warning("out of memory with %d tasks per step: %d from now on", len(group), half)
                    continue
                msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                log.error("tasks %s failed: %s", ", ".join(t.id for t in group), msg, exc_info=True)
                self.log(event="group_failed", tasks=[t.id for t in group], error=msg)
                runs = {t.id: TaskRun(t.id, error=f"failed, fallback answers: {msg}") for t in group}
                failed = True
            planner.group_done()
            self._log_fast_paths()
            t_write = time.perf_counter()
            for t in group:
                # A failed task is not written to tasks/: a --resume run tries it again.
                self._finish_task(t, runs[t.id], persist=not failed)
                if self.tq is not None:
                    self.tq.done(t.id)
            phases["write"] = round(time.perf_counter() - t_write, 3)
            self.log(event="group", group=self.group_index, tasks=[t.id for t in group], failed=failed,
                     end=round(self.deadline.elapsed(), 3), **phases)
            if not failed:
                # What a group costs besides its steps and its inference (fresh adapters, the sample
                # stream, saving adapters, writing results): kept for every group still to run.
                steps_s = sum(r.train_seconds for r in runs.values())
                planner.record_group_overhead(max(0.0, time.perf_counter() - t_group - steps_s - inference_s))
            if self.progress is not None:
                self.progress.update(len(group), text=self._postfix(runs), force=True)
        if self.progress is not None:
            self.progress.close()
            self.progress = None

        if self.world > 1:
            self._merge_parts(tasks)
        if self.rank == 0:
            # The plot takes about a second (more on a loaded machine): drawn only when that much
            # of the budget itself (margin included) is still left.
            left = self.deadline.budget - self.deadline.elapsed()
            plot = left > PLOT_SECONDS
            if not plot:
                self.log(event="report_plot_skipped", reason="deadline", left_s=round(left, 2))
            runs = {**self.others, **self.results}
            for t in tasks:   # as in run.json: a task with known outputs and no answer scores as unanswered
                if t.has_solutions and (t.id not in runs or runs[t.id].metrics is None):
                    self.report.add(TaskResult(t.id, metrics=score_task(t, None),
                                               error=runs[t.id].error if t.id in runs else None))
            try:
                self.report.write(self.out, plot=plot)
            except Exception as e:   # the report is a view of the results; it must not lose them
                log.error("report not written: %s: %s", type(e).__name__, e)
                self.log(event="report_failed", error=f"{type(e).__name__}: {e}")
        self._log_fast_paths()
        summary = self._summary(tasks, problems, backend, reason)
        write_json(self.out / ("run.json" if self.world == 1 else f"run.rank{self.rank}.json"), summary)
        if self.rank == 0:   # from what the run wrote, with the tasks for their grids
            write_html_in_budget(self.out, tasks, self.deadline, self.log)
        self.log(event="end", **{k: v for k, v in summary.items() if k in ("seconds", "tasks", "trained", "metrics")})
        self.log.close()
        return summary

    # -- training -------------------------------------------------------------------------------
    def _train_group(self, backend, group, steps, planner, pretrained, lora_cfg) -> dict:
        from ..samples.packing import PackedStream
        from ..samples.sampling import OBJECTIVES

        cfg = self.cfg
        runs = {t.id: TaskRun(t.id) for t in group}
        slots = list(range(len(group)))
        self.slot_of = {t.id: s for t, s in zip(group, slots)}   # how inference finds each task's adapter
        seeds = [_task_seed(cfg.seed, t.id) for t in group]
        if pretrained is not None:
            backend.load_adapter(slots, pretrained, total_steps=max(1, steps))
        else:
            backend.reset_adapters(slots, seeds=seeds, total_steps=max(1, steps))
        if steps <= 0:
            reason = ("evaluation without training" if not cfg.train
                      else "fewer than 2 train pairs: nothing to leave one out" if not _trainable(group[0])
                      else "no time left for training")
            self.log(event="no_training", tasks=[t.id for t in group], reason=reason)
            return runs
        stream = PackedStream(group, seed=seeds[0], row_len=cfg.row_len, samples_per_task=cfg.samples_per_task,
                              config=cfg.sample_config(), augment=cfg.augment_config(), threads=1, queue_size=4,
                              batches=steps)
        done, losses, t_group = 0, np.full(len(group), np.nan), time.perf_counter()
        obj_losses = np.full((len(group), len(OBJECTIVES)), np.nan)
        mixed = sum(w > 0 for _, w in cfg.objectives) > 1   # per-objective losses are worth logging
        tokens = np.zeros(len(group), np.int64)
        targets = np.zeros((len(group), max(len(t.train) for t in group)), np.int64)
        try:
            # Keep the inference time of this group and every later one free while stepping: no
            # step starts that is predicted to end past the group's stop, and a step runs through
            # the planner's gate, in micro-batches, abandoned whole when its rest would not fit.
            for step in range(steps):
                batch = next(stream)
                lengths = batch.sample_lengths()
                if step > 0 and cfg.max_task_seconds and not self._within_cap(t_group, planner, len(group)):
                    self.log(event="stop_early", tasks=[t.id for t in group], step=step, reason="task cap",
                             max_task_seconds=cfg.max_task_seconds)
                    break
                if not planner.may_step(lengths=lengths):
                    predicted = planner.step_seconds(lengths)
                    self.log(event="stop_early", tasks=[t.id for t in group], step=step, reason="deadline",
                             tokens=int(lengths.sum()), predicted_s=None if predicted is None else round(predicted, 2),
                             left_s=round(planner.train_stop() - self.deadline.clock(), 2))
                    break
                gate = planner.gate()
                t = time.perf_counter()
                try:
                    stats = backend.step(batch, gate=gate)
                except StepAbandoned as e:
                    self.steps_abandoned += 1
                    self.log(event="step_abandoned", tasks=[t.id for t in group], step=step, tokens=e.tokens,
                             tokens_done=e.tokens_done, seconds=round(e.seconds, 2),
                             predicted_s=None if e.predicted is None else round(e.predicted, 2),
                             left_s=round(e.left, 2), pieces=gate.pieces)
                    break
                planner.record(time.perf_counter() - t, gated=gate.seconds)   # the gate measured its samples
                done += 1
                n = len(group)
                seen = np.asarray(stats.label_tokens[:n]) > 0
                losses[seen] = np.asarray(stats.loss[:n])[seen]
                step_obj = {}
                if len(stats.objective_tokens):
                    has = np.asarray(stats.objective_tokens[:n]) > 0
                    obj_losses[has] = np.asarray(stats.objective_loss[:n])[has]
                    step_obj = {o: float(np.mean(stats.objective_loss[:n, i][has[:, i]]))
                                for i, o in enumerate(OBJECTIVES) if has[:, i].any() and mixed}
                for a in range(len(group)):
                    tokens[a] += int((batch.adapter_ids == a).sum())
                if batch.target_ids is not None:
                    targets += batch.target_counts(*targets.shape)
                lrs = np.asarray(stats.lr[:n])[seen]
                self.log(event="step", group=self.group_index, tasks=len(group), step=step,
                         loss=float(np.nanmean(stats.loss[:n][seen])) if seen.any() else None,
                         # each task's loss at this step, in the group's order (null: no labels)
                         losses=[None if not ok else round(float(x), 5) for x, ok in zip(stats.loss[:n], seen)],
                         lr=float(lrs.max()) if len(lrs) else None,
                         **({"objective_loss": step_obj} if step_obj else {}),
                         tokens=stats.tokens, label_tokens=int(np.asarray(stats.label_tokens[:n]).sum()),
                         tokens_per_s=round(stats.tokens_per_s, 1), pieces=gate.pieces,
                         budget_left=round(self.deadline.remaining(), 1))
                self._status(f"train step {done}/{steps} · {stats.tokens_per_s:,.0f} tok/s", force=done == 1)
        finally:
            stream.close()
        seconds = time.perf_counter() - t_group
        for i, t in enumerate(group):
            r = runs[t.id]
            r.steps, r.train_seconds = done, seconds / len(group)
            r.train_tokens = int(tokens[i])
            r.targets = targets[i, :len(t.train)].tolist()
            r.final_loss = None if np.isnan(losses[i]) else float(losses[i])
            if mixed:
                r.objective_losses = {o: float(obj_losses[i, j]) for j, o in enumerate(OBJECTIVES)
                                      if not np.isnan(obj_losses[i, j])}
            if cfg.save_adapters == "none":
                continue
            try:
                backend.save_adapter(i, self.paths.adapter_dir(t.id), meta={"task": t.id, "steps": done},
                                     dtype=self.adapter_dtype)
                r.adapter_saved = True
            except Exception as e:  # a full disk must not lose the answers
                r.adapter_saved = False
                r.error = f"{ADAPTER_NOT_SAVED}{type(e).__name__}: {e}"
                log.error("%s: %s", t.id, r.error)
                self.log(event="adapter_not_saved", task=t.id, error=f"{type(e).__name__}: {e}")
        return runs

    # -- inference ------------------------------------------------------------------------------
    # -- bookkeeping ----------------------------------------------------------------------------
    def _finish_task(self, task, r: TaskRun, resumed: bool = False, persist: bool = True) -> None:
        self.results[task.id] = r
        if r.attempts:
            self.submission.update(task.id, [[np.asarray(g, np.uint8) for g in a] for a in r.attempts])
        if persist and not resumed:
            r.fingerprint = task.fingerprint()
            try:
                write_task_record(self.paths.task_file(task.id), r)
            except OSError as e:   # a full disk: the answers are in the submission; resume redoes it
                log.error("%s: result not written: %s", task.id, e)
                self.not_written[task.id] = f"{type(e).__name__}: {e}"
                self.log(event="write_failed", task=task.id, error=str(e))
        self.report.add(task_result(r))
        self.log(event="task", task=task.id, steps=r.steps, seconds=round(r.train_seconds + r.inference_seconds, 3),
                 final_loss=r.final_loss, metrics=r.metrics, error=r.error, resumed=resumed)

    def _within_cap(self, t_group: float, planner, n_tasks: int) -> bool:
        """Whether one more training step of the group that started at ``t_group`` still leaves its
        inference (measured per task, once known) inside ``max_task_seconds``: the tasks of a group
        train together, so the cap bounds the group's training and inference."""
        infer = (planner.inference_per_task or 0.0) * n_tasks
        spent = time.perf_counter() - t_group
        return spent + (planner.step_time or 0.0) + infer <= self.cfg.max_task_seconds

    def _task_queue(self, tasks):
        """The shared queue of a multi-worker run with ``sharding="queue"`` (None otherwise): every
        task, longest first, in the store of torch.distributed's rendezvous."""
        if self.world == 1 or self.cfg.sharding != "queue":
            return None
        from .queue import TaskQueue, default_store, longest_first

        return TaskQueue(default_store(), [t.id for t in longest_first(tasks)], worker=self.rank,
                         lease_s=self.cfg.lease_s, prefix=f"arcfast/queue/{self.cfg.out_dir.resolve()}")

    def _claim(self, by_id: dict, size: int) -> list:
        """Up to ``size`` tasks from the queue for the next group: waits (until the deadline) for
        the first, takes the others only if handed out at once. A task a --resume already finished
        is marked done and skipped."""
        # At most an even share of what is left: a group never takes tasks an idle worker could run.
        size = min(size, max(1, math.ceil(self.tq.remaining() / self.world)))
        out = []
        while len(out) < size:
            if self.deadline.expired():
                break
            tid = self.tq.claim(timeout=self.deadline.remaining() if not out else 0.0)
            if tid is None:
                break
            if tid not in self._todo:
                self.tq.done(tid)
                continue
            out.append(by_id[tid])
        if out:
            self.log(event="claimed", tasks=[t.id for t in out], taken_over=[t.id for t in out if t.id in self.tq.taken_over])
        return out

    def _resume(self, mine, tasks) -> list:
        """Keep every task of ``mine`` whose result an earlier run wrote for the same task (same
        fingerprint); return the rest, to run. Says what changed."""
        todo, kept, changed = [], [], []
        for t in mine:
            done, why = self._load_done(t)
            if done is not None:
                self._finish_task(t, done, resumed=True)
                kept.append(t.id)
            else:
                todo.append(t)
                if why:
                    changed.append((t.id, why))
        ids = {t.id for t in tasks}
        gone = sorted(r.task_id for r in self._read_results() if r.task_id not in ids)
        msg = f"resume: {len(kept)} finished tasks kept, {len(todo)} to run"
        if changed:
            msg += f"; redone, changed since: {', '.join(f'{i} ({w})' for i, w in changed[:10])}"
            msg += f" and {len(changed) - 10} more" if len(changed) > 10 else ""
        if gone:
            msg += f"; {len(gone)} earlier results are for tasks no longer in the input (left as they are)"
        log.info("%s", msg)
        self.log(event="resume", kept=kept, changed=[i for i, _ in changed], gone=gone, message=msg)
        if self.cfg.progress and self.rank == 0:
            print(msg, flush=True)
        return todo

    def _load_done(self, task) -> tuple[Optional[TaskRun], Optional[str]]:
        """(the result an earlier run wrote for ``task``, None) when it is still valid, else
        (None, why not: None when there is none at all)."""
        path = self.paths.task_file(task.id)
        if not path.exists():
            return None, None
        try:
            r = read_task_record(path)
        except Exception as e:
            log.warning("%s: unreadable (%s); the task runs again", path, e)
            return None, "unreadable result"
        if r.task_id != task.id:
            return None, "result of another task"
        if r.fingerprint != task.fingerprint():
            return None, "task changed" if r.fingerprint else "result without fingerprint"
        if r.attempts and len(r.attempts) != len(task.test):
            return None, "test inputs changed"
        return r, None

    def _read_results(self) -> list:
        """Every readable ``tasks/*.json`` result (unreadable ones are skipped, with a warning)."""
        return [r for _, r in read_task_records(self.paths.tasks_dir) if not isinstance(r, Exception)]

    def _merge_parts(self, tasks) -> None:
        """Rank 0 merges every rank's answers into submission.json (missing ranks keep fallbacks)."""
        import torch.distributed as dist

        # A queue's rank 0 stops claiming only once every task is done (or the deadline passed):
        # nothing to wait for, and no barrier that a dead worker would hang.
        if self.tq is None and dist.is_available() and dist.is_initialized():
            dist.barrier()
        if self.rank != 0:
            return
        from ..answers.submission import SubmissionWriter

        merged = SubmissionWriter(self.paths.submission, tasks, unloadable=self.unloadable)
        by_id = {t.id: t for t in tasks}
        for r in self._read_results():
            t = by_id.get(r.task_id)
            if t is None or r.fingerprint != t.fingerprint():
                continue
            if r.attempts:
                merged.update(r.task_id, [[np.asarray(g, np.uint8) for g in a] for a in r.attempts])
            if r.task_id not in self.results:  # another rank's task joins rank 0's report and summary
                self.report.add(task_result(r))
                self.others[r.task_id] = r

    def _log_fast_paths(self) -> None:
        """One event per fast path switched off since the last call (arcfast.runtime)."""
        for name, why in fast_paths_off().items():
            if name not in self._paths_logged:
                self._paths_logged.add(name)
                self.log(event="fast_path_off", path=name, error=why)

    def _progress(self, total: int, initial: int):
        if not self.cfg.progress or self.rank != 0:
            return None
        from .progress import Progress

        return Progress(total, initial, desc="ttft", unit="tasks")

    def _status(self, text: str, force: bool = False) -> None:
        """Say on the progress display what the current group is doing."""
        if self.progress is not None:
            self.progress.status(f"{self._where} · {text} · budget left "
                                 f"{format_duration(self.deadline.remaining())}", force=force)

    def _postfix(self, runs: dict) -> str:
        tok = sum(r.train_tokens for r in runs.values())
        sec = max(1e-9, sum(r.train_seconds for r in runs.values()))
        return f"{tok / sec:,.0f} tok/s, budget left {format_duration(self.deadline.remaining())}"

    def _mine(self, tasks) -> list:
        """This worker's tasks: its static share, or those it finished from the queue."""
        if self.tq is not None:
            return [t for t in tasks if t.id in self.results]
        return tasks[self.rank::self.world]

    def _selection(self, mine, runs: dict) -> Optional[dict]:
        """The mean vote_1/vote_2 of every selector over ``mine``'s tasks with known outputs (a
        task without predictions counts 0 for each), or None when no task has a selection."""
        from ..answers.select import mean_selection

        return mean_selection([runs[t.id].selection if t.id in runs else None for t in mine if t.has_solutions])

    def _summary(self, tasks, problems, backend, reason) -> dict:
        from ..answers.metrics import mean_metrics, score_task

        # Rank 0 of several workers speaks for the whole run once it merged the others' results.
        runs = {**self.others, **self.results}
        mine = tasks if self.world > 1 and self.rank == 0 else self._mine(tasks)
        # A task with known outputs that got no answer (out of time, failed) scores as unanswered.
        scored = [(runs[t.id].metrics if t.id in runs and runs[t.id].metrics else score_task(t, None))
                  for t in mine if t.has_solutions]
        # Why something could not be written (the first reason met), for the summary line.
        why = [r.error.removeprefix(ADAPTER_NOT_SAVED) for r in runs.values() if r.adapter_saved is False and r.error]
        why += list(self.not_written.values())
        return {
            "tasks": len(tasks) + len(self.unloadable),
            "tasks_this_rank": len(self.results),
            "trained": sum(1 for r in runs.values() if r.steps > 0),
            # Answered by the model: at least one test input got a grid that parsed.
            "answered": sum(1 for r in runs.values() if any(r.attempts)),
            "failed": sorted(r.task_id for r in runs.values() if r.error and r.error.startswith("failed")),
            # What the budget cut: training steps stopped part way (their updates not applied), and
            # the tasks that leave-one-out could train but that got no step (or no turn at all).
            "steps_abandoned": self.steps_abandoned,
            "untrained": sorted(t.id for t in mine if self.cfg.train and self.cfg.steps > 0 and _trainable(t)
                                and (t.id not in runs or runs[t.id].steps == 0)),
            # What could not be written (a full disk): the answers are in the submission all the same.
            "adapters_not_saved": sorted(r.task_id for r in runs.values() if r.adapter_saved is False),
            "adapters_saved": sum(1 for r in runs.values() if r.adapter_saved),
            "results_not_written": sorted(self.not_written),
            # Fast paths that raised where they ran and were switched off (the run went on without them).
            "fast_paths_off": fast_paths_off(),
            "write_error": why[0] if why else None,
            "problems": [str(p) for p in problems],
            "backend": backend.name,
            "backend_reason": reason,
            "unloadable": sorted(self.unloadable),
            # From the deadline's start: the process start under the CLI, imports included.
            "seconds": round(self.deadline.elapsed(), 2),
            "budget": self.cfg.budget,
            "margin": self.deadline.margin,
            "command": self.command,
            "model": self.cfg.model,
            "device": self.device_name,
            "metrics": mean_metrics(scored) if scored else None,
            "select": self.cfg.select,
            "selection": self._selection(mine, runs),
            "sharding": None if self.world == 1 else self.cfg.sharding,
            "submission": str(self.out / "submission.json"),
        }


def run_ttft(cfg: TTFTConfig) -> dict:
    """Run TTFT as configured; see the module docstring. Returns the run summary."""
    rank, world = _dist()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            import torch

            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        return TTFTRun(cfg).run()
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


__all__ = ["TTFTRun", "run_ttft"]
