"""Where a training step and a decode step spend their time: torch.profiler over warmed-up steps.

    python -m arcfast.bench.profile_step                              # CUDA when available, both parts
    python -m arcfast.bench.profile_step --device cpu --model tiny --what train --out runs/prof
    python -m arcfast.bench.profile_step --what decode --prompts 96 --new 64

- ``train``: :class:`arcfast.train.trainer.Trainer` steps on packed TTFT batches (``--tasks-per-step``
  tasks of the ARC-AGI-1 evaluation set, one sample of each per step, through
  :class:`arcfast.samples.packing.PackedStream`), ``--warmup`` steps untimed, then ``--steps`` profiled;
- ``decode``: :class:`arcfast.infer.generate.Generator` on real inference prompts of the same tasks (each
  task's adapter), ``--new`` forced new tokens, after a warm-up call (which captures the CUDA
  graphs). A call is prefill + decode: the Generator's decode-step calls (``_run_steps``, the steps
  between two reads of the done flags) are marked as profiler ranges for the call, and the per-step
  numbers count what was launched inside them; the wall time is the Generator's own decode timer.

Writes to ``--out`` (default ``runs/profile-<date>-<device>``): ``train_trace.json`` /
``decode_trace.json`` (Chrome traces: chrome://tracing or https://ui.perfetto.dev), ``profile.txt``
(per part: per-step summary, then the top ops by self device time on CUDA, self CPU time on the
CPU) and ``summary.json``.

Per step (what ran inside the marked ``train_step`` / ``decode_steps`` ranges): wall time (device
synchronised), device busy time (the sum of kernel, copy and memset times: CUDA only), host time
blocked in synchronising CUDA calls, the host's busy time (wall less blocked), kernel launches
(``cudaLaunchKernel`` and kin), CUDA graph launches, kernels executed (graph replays included),
aten op calls (nested ones included) and the ranges' CPU time. A step whose device busy time
is far below its wall time is bound by the host's launches, not by the GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
            "cudaLaunchCooperativeKernel")
GRAPH_LAUNCHES = ("cudaGraphLaunch", "cuGraphLaunch")
# Runtime calls in which the host waits for the device (a device-to-host copy waits for the stream).
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
         "cudaMemcpyAsync", "cuStreamSynchronize", "cuCtxSynchronize")


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def counts(prof, name: str) -> dict:
    """Totals (microseconds and counts) over the profiled ranges called ``name`` (``record_function``)
    and everything under them: device busy time (kernels, copies and memsets launched there, graph
    replays included), host time blocked in synchronising calls, kernel and graph launches, aten op
    calls and the ranges' CPU time."""
    from torch.autograd import DeviceType

    roots = [e for e in prof.events() if e.name == name]
    if not roots:
        raise RuntimeError(f"the profile holds no range named {name!r}")
    out = dict(device_busy_us=0.0, kernels=0, host_blocked_us=0.0, launches=0, graph_launches=0, aten_ops=0,
               cpu_us=sum(float(e.cpu_time_total) for e in roots))
    stack = list(roots)
    while stack:
        e = stack.pop()
        stack.extend(e.cpu_children)
        if e.device_type != DeviceType.CPU:
            continue
        out["device_busy_us"] += sum(float(k.duration) for k in e.kernels)
        out["kernels"] += len(e.kernels)
        out["host_blocked_us"] += float(e.self_cpu_time_total) if e.name in SYNCS else 0.0
        out["launches"] += e.name in LAUNCHES
        out["graph_launches"] += e.name in GRAPH_LAUNCHES
        out["aten_ops"] += e.name.startswith("aten::")
    return out


def per_step(total: dict, wall_s: float, steps: int, cuda: bool) -> dict:
    """``total`` (from :func:`counts`) and the wall time as per-step numbers (ms and counts)."""
    n = max(1, steps)
    wall_ms = 1e3 * wall_s / n
    out = {"steps": steps, "wall_ms": wall_ms,
           "launches": total["launches"] / n, "graph_launches": total["graph_launches"] / n,
           "kernels": total["kernels"] / n, "aten_ops": total["aten_ops"] / n,
           "cpu_ms": total["cpu_us"] / 1e3 / n}
    if cuda:
        blocked = total["host_blocked_us"] / 1e3 / n
        busy = total["device_busy_us"] / 1e3 / n
        out.update(device_busy_ms=busy, host_blocked_ms=blocked, host_busy_ms=max(0.0, wall_ms - blocked),
                   device_utilisation=busy / wall_ms if wall_ms else None)
    else:
        out.update(device_busy_ms=None, host_blocked_ms=None, host_busy_ms=wall_ms, device_utilisation=None)
    return out


def _table(prof, cuda: bool, rows: int = 30) -> str:
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)


def _profiler(cuda: bool):
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    return profile(activities=acts, record_shapes=False, with_stack=False)


def _tasks(n: Optional[int] = None):
    """The first ``n`` (default: all) ARC-AGI-1 evaluation tasks with a leave-one-out pool."""
    from ..arc.loading import load_tasks

    tasks = [t for t in load_tasks("arc1:eval") if len(t.train) >= 2]
    if n is not None and len(tasks) < n:
        raise ValueError(f"arc1:eval has only {len(tasks)} usable tasks, {n} asked")
    return tasks if n is None else tasks[:n]


def profile_train(model, args, out: Path) -> tuple[dict, str]:
    """Profile ``args.steps`` Trainer steps on packed batches of ``args.tasks_per_step`` tasks."""
    import torch

    from ..lora.multi import LoRAConfig
    from ..samples.packing import PackedStream
    from ..samples.sampling import SampleConfig
    from ..train.trainer import TrainConfig, Trainer

    cuda = model.device.type == "cuda"
    n = args.tasks_per_step
    tasks = _tasks(n)
    trainer = Trainer(model, LoRAConfig(r=args.rank, alpha=2.0 * args.rank), TrainConfig(lr=1e-4, steps=1000), n)
    trainer.reset_adapters(range(n), seeds=list(range(n)), total_steps=1000)
    with PackedStream(tasks, seed=0, row_len=args.row_len, samples_per_task=1,
                      config=SampleConfig(max_len=min(args.max_len, args.row_len))) as stream:
        batches = stream.take(args.warmup + args.steps)
    for b in batches[:args.warmup]:
        trainer.step(b)
    _sync(model.device)
    timed = batches[args.warmup:]
    walls = []
    with _profiler(cuda) as prof:
        for b in timed:
            t0 = time.perf_counter()
            with torch.profiler.record_function("train_step"):
                trainer.step(b)
                _sync(model.device)
            walls.append(time.perf_counter() - t0)
    prof.export_chrome_trace(str(out / "train_trace.json"))
    s = per_step(counts(prof, "train_step"), sum(walls), len(timed), cuda)
    s.update(tasks=n, rows=[list(b.shape) for b in timed], tokens=[b.n_tokens for b in timed],
             fill=sum(b.n_tokens for b in timed) / max(1, sum(b.input_ids.size for b in timed)),
             paths={"attention": trainer.cfg.attention, "lora_path": trainer.cfg.lora_path,
                    "ops": getattr(trainer, "ops", None), "loss": getattr(trainer, "loss_impl", None)})
    del trainer
    return s, _table(prof, cuda)


def profile_decode(model, args, out: Path) -> tuple[dict, str]:
    """Profile one warmed-up Generator call of ``args.prompts`` prompts, ``args.new`` forced new
    tokens each; per-step numbers count only what its decode-step calls launched (not the prefill)."""
    import numpy as np
    import torch

    from ..arc.augment import test_time_augmentations
    from ..infer.decoding import GenerationConfig
    from ..infer.generate import Generator
    from ..lora.multi import LoRAConfig, MultiLoRA
    from ..samples.prompts import build_inference_prompts

    cuda = model.device.type == "cuda"
    n = args.tasks_per_step
    lora = MultiLoRA(model, LoRAConfig(r=args.rank, alpha=2.0 * args.rank), n_adapters=n)
    with torch.no_grad():
        g = torch.Generator(device=lora.weight.device).manual_seed(1)
        lora.weight.normal_(0.0, 0.02, generator=g)   # B = 0 would make every adapter the base model
    per_task = -(-args.prompts // n)
    prompts, ids, a = [], [], 0
    for t in _tasks():
        if a == n:
            break
        try:
            ps = build_inference_prompts(t, 0, test_time_augmentations(t, per_task, seed=0), max_len=args.max_len)
        except ValueError:   # even one demonstration is over --max-len: the engine skips it too
            continue
        prompts += ps
        ids += [a] * len(ps)
        a += 1
    if a < n:
        raise ValueError(f"only {a} tasks have inference prompts within --max-len {args.max_len}")
    prompts, ids = prompts[:args.prompts], ids[:args.prompts]
    gen = Generator(model, lora=lora, cuda_graphs=cuda and args.cuda_graphs)
    cfg = GenerationConfig(max_new_tokens=args.new, stop_on_eog=False)
    gen.generate(prompts, ids, cfg)   # warm-up: buffers, graphs, kernels
    _sync(model.device)
    run_steps = gen._run_steps

    def decode_steps(*a, **kw):   # the decode steps between two reads of the done flags
        with torch.profiler.record_function("decode_steps"):
            return run_steps(*a, **kw)

    gen._run_steps = decode_steps
    try:
        with _profiler(cuda) as prof:
            t0 = time.perf_counter()
            gen.generate(prompts, ids, cfg)
            _sync(model.device)
            wall = time.perf_counter() - t0
    finally:
        del gen._run_steps
    prof.export_chrome_trace(str(out / "decode_trace.json"))
    st = gen.stats
    s = per_step(counts(prof, "decode_steps"), st.decode_s, st.decode_steps, cuda)
    s.update(prompts=len(prompts), adapters=len(set(ids)), new_tokens=args.new, prompt_tokens=st.prompt_tokens,
             mean_prompt_len=float(np.mean([len(p) for p in prompts])), prefill_s=st.prefill_s,
             decode_s=st.decode_s, call_s=wall, lora_modes=dict(st.lora_modes), cuda_graphs=gen.cuda_graphs,
             note="wall: the Generator's decode timer (done-flag reads included) over its decode steps; "
                  "the rest: what was launched inside its decode-step calls")
    return s, _table(prof, cuda)


def _format(name: str, s: dict) -> str:
    def f(x, unit=""):
        return "-" if x is None else (f"{x:.3f}{unit}" if isinstance(x, float) else f"{x}{unit}")

    lines = [f"== {name}: per step (mean of {s['steps']} steps) ==",
             f"wall                {f(s['wall_ms'], ' ms')}",
             f"device busy         {f(s['device_busy_ms'], ' ms')}"
             + ("" if s["device_utilisation"] is None else f"  ({100 * s['device_utilisation']:.0f}% of wall)"),
             f"host busy           {f(s['host_busy_ms'], ' ms')}",
             f"host blocked (sync) {f(s['host_blocked_ms'], ' ms')}",
             f"kernel launches     {s['launches']:.0f}   graph launches {s['graph_launches']:.0f}   "
             f"kernels run {s['kernels']:.0f}",
             f"aten op calls       {s['aten_ops']:.0f}   (CPU time inside the step {s['cpu_ms']:.2f} ms)"]
    skip = {"steps", "wall_ms", "device_busy_ms", "host_busy_ms", "host_blocked_ms", "launches", "graph_launches",
            "kernels", "aten_ops", "cpu_ms", "device_utilisation"}
    lines += [f"{k:<20}{v}" for k, v in s.items() if k not in skip]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m arcfast.bench.profile_step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--what", default="both", choices=("train", "decode", "both"))
    ap.add_argument("--model", default=None, help="preset or checkpoint directory (default: qwen2.5-0.5b on "
                                                  "CUDA, tiny on the CPU)")
    ap.add_argument("--tasks-per-step", type=int, default=16, help="tasks (adapters) per training step / decode call")
    ap.add_argument("--steps", type=int, default=3, help="profiled training steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--row-len", type=int, default=None, help="packed row length (default 8192 CUDA, 2048 CPU)")
    ap.add_argument("--max-len", type=int, default=None, help="longest prompt (default: the row length)")
    ap.add_argument("--prompts", type=int, default=None, help="decode prompts (default 96 CUDA, 8 CPU)")
    ap.add_argument("--new", type=int, default=None, help="forced new tokens per prompt (default 64 CUDA, 8 CPU)")
    ap.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                    help="decode eagerly on CUDA (to count the step's kernel launches)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="output directory (default runs/profile-<date>-<device>)")
    args = ap.parse_args(argv)
    given = [args.tasks_per_step, args.steps] + [v for v in (args.prompts, args.new) if v is not None]
    if min(given) < 1 or args.warmup < 0:
        ap.error("--tasks-per-step, --steps, --prompts and --new must be >= 1, --warmup >= 0")

    import torch

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _profile(args)
    finally:
        torch.set_num_threads(threads)


def _profile(args) -> int:
    import torch

    from ..model.checkpoint import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.device(device).type == "cuda"
    args.model = args.model or ("qwen2.5-0.5b" if cuda else "tiny")
    args.row_len = args.row_len or (8192 if cuda else 2048)
    args.max_len = min(args.max_len or args.row_len, args.row_len)
    args.prompts = args.prompts or (96 if cuda else 8)
    args.new = args.new or (64 if cuda else 8)
    out = Path(args.out or time.strftime(f"runs/profile-%Y%m%d-%H%M%S-{'gpu' if cuda else 'cpu'}"))
    out.mkdir(parents=True, exist_ok=True)

    model = load_model(args.model, device=device)
    head = (f"arcfast profile: {args.model} on {device}"
            + (f" ({torch.cuda.get_device_name(0)})" if cuda else "")
            + f", {model.dtype}, torch {torch.__version__}, LoRA r={args.rank}, {args.tasks_per_step} tasks/adapters")
    summary: dict = {"header": head, "args": vars(args)}
    text = [head, ""]
    parts = ("train", "decode") if args.what == "both" else (args.what,)
    for part in parts:
        fn = profile_train if part == "train" else profile_decode
        if part == "decode":
            model.eval()
        print(f"[{part}] profiling...", file=sys.stderr, flush=True)
        s, table = fn(model, args, out)
        summary[part] = s
        text += [_format(part, s), "", f"top ops ({'self device' if cuda else 'self CPU'} time, all profiled steps):",
                 table, ""]
    (out / "profile.txt").write_text("\n".join(text))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(head)
    for part in parts:
        print(_format(part, summary[part]))
    print(f"\nwritten: {out}/profile.txt, summary.json, " + ", ".join(f"{p}_trace.json" for p in parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
