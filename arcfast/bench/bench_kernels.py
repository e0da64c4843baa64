"""The fused Triton kernels against their plain PyTorch references, same inputs, same run.

    arcfast bench -k kernels                 # GPU: full DESIGN.md shapes (16,384 tokens)
    arcfast bench -k kernels --quick         # 4,096 tokens

Shapes are those of the design brief: 16,384 tokens, hidden 896, MLP 4,864, LoRA r = 32 over 1, 16
and 64 adapters, bf16. Adapters are laid out as the packer lays them out (each sample's tokens
together, samples of random tasks one after another), plus one row with the ids shuffled token by
token, the worst case of the fused projection's epilogue.

Times are medians of ``triton.testing.do_bench`` (L2 flushed before every launch), in µs; ``ratio``
is reference time over kernel time. The Triton kernels need a GPU: on the CPU the rows time the
reference path, which is what the trainer runs there, with no baseline.
"""
from __future__ import annotations

import time

from .runner import Context, Row

BENCH = "kernels"


def _gpu_time_us(fn) -> float:
    try:
        import triton.testing
    except ImportError:   # no Triton (the kernels run their references): CUDA events instead
        return _cuda_event_time_us(fn)
    return 1e3 * triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _cuda_event_time_us(fn, reps: int = 50) -> float:
    import torch

    for _ in range(5):
        fn()
    ts = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        ts.append(start.elapsed_time(end))
    ts.sort()
    return 1e3 * ts[len(ts) // 2]


def _cpu_time_us(fn, reps: int = 7) -> float:
    fn()
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return 1e6 * ts[len(ts) // 2]


def _packed_ids(T: int, n: int, gen, mean_len: int = 600):
    """Samples of ~mean_len tokens, each of a random task, back to back; the last 2% padding."""
    import torch

    ids = torch.empty(T, dtype=torch.int32)
    t = 0
    while t < T:
        length = int(torch.randint(mean_len // 2, mean_len * 3 // 2, (1,), generator=gen))
        ids[t:t + length] = int(torch.randint(0, n, (1,), generator=gen))
        t += length
    ids[T - T // 50:] = -1
    return ids


def _fwd_bwd(f, inputs, up):
    import torch

    def go():
        out = f()
        torch.autograd.grad(out, inputs, up)

    return go


def _gpu_cases(T: int):
    """(case, kernel fn, baseline fn, baseline name, extra) on the GPU, bf16, DESIGN.md shapes."""
    import torch

    from ..kernels import lora as L
    from ..kernels.cross_entropy import grouped_cross_entropy, grouped_cross_entropy_reference
    from ..kernels.rmsnorm import rms_norm, rms_norm_reference
    from ..kernels.rope import rope_, rope_reference, rope_tables
    from ..kernels.swiglu import swiglu, swiglu_reference

    dev, dt = "cuda", torch.bfloat16
    d, dff, r = 896, 4864, 32
    gen = torch.Generator().manual_seed(0)
    ref = "torch reference"

    # ---- LoRA --------------------------------------------------------------------------------
    x = torch.randn(T, d, generator=gen).to(dev, dt).requires_grad_(True)
    W = (torch.randn(dff, d, generator=gen) / d ** 0.5).to(dev, dt)
    up = torch.randn(T, dff, generator=gen).to(dev, dt)
    yield ("base projection x@W.T fwd (cuBLAS)", lambda: torch.nn.functional.linear(x, W), None, None,
           {"flops": 2 * T * d * dff})
    yield ("base projection fwd+bwd, dx only (cuBLAS)",
           _fwd_bwd(lambda: torch.nn.functional.linear(x, W), [x], up), None, None, {})
    for n in (1, 16, 64):
        A = (torch.randn(n, d, r, generator=gen) / d ** 0.5).to(dev, dt).requires_grad_(True)
        B = (torch.randn(n, r, dff, generator=gen) / r ** 0.5).to(dev, dt).requires_grad_(True)
        ids = _packed_ids(T, n, gen).to(dev)
        seg = L.lora_segments(ids, n)
        ab = [x, A, B]
        delta = lambda A=A, B=B, seg=seg: L.lora_delta(x, A, B, seg, 2.0)
        yield (f"lora_delta fwd, {n} adapters", delta,
               lambda A=A, B=B, ids=ids: L.lora_delta_reference(x, A, B, ids, 2.0), ref, {})
        if hasattr(torch, "_grouped_mm"):
            def grouped(A=A, B=B, seg=seg, n=n):
                xs = x.index_select(0, seg.order)
                offs = seg.offsets[1:n + 1]
                h = torch._grouped_mm(xs, A, offs=offs)
                return torch._grouped_mm(h, B, offs=offs)
            yield (f"lora_delta fwd, {n} adapters", delta, grouped,
                   "torch._grouped_mm (gather, 2 grouped GEMMs, no scatter)", {})
        yield (f"lora_delta fwd+bwd, {n} adapters", _fwd_bwd(delta, ab, up),
               _fwd_bwd(lambda A=A, B=B, ids=ids: L.lora_delta_reference(x, A, B, ids, 2.0), ab, up), ref, {})
        lin = lambda A=A, B=B, seg=seg: L.lora_linear(x, W, None, A, B, seg, 2.0)
        yield (f"lora_linear fwd {d}->{dff}, {n} adapters", lin,
               lambda A=A, B=B, ids=ids: L.lora_linear_reference(x, W, None, A, B, ids, 2.0), ref,
               {"flops": 2 * T * d * dff})

        def cublas_then_expand(A=A, B=B, seg=seg):
            xa = L._seg_matmul(x, A, L._a_strides(A), d, r, seg, 2.0)
            y = torch.nn.functional.linear(x, W)
            return L._seg_matmul(xa, B, L._b_strides(B), r, dff, seg, 1.0, out=y)

        yield (f"lora_linear fwd {d}->{dff}, {n} adapters", lin, cublas_then_expand,
               "cuBLAS x@W.T, then Triton expand added in place", {})
        yield (f"lora_linear fwd+bwd {d}->{dff}, {n} adapters", _fwd_bwd(lin, ab, up),
               _fwd_bwd(lambda A=A, B=B, ids=ids: L.lora_linear_reference(x, W, None, A, B, ids, 2.0), ab, up),
               ref, {"adapters": n})
        if n == 64:
            shuffled = torch.randint(0, n, (T,), generator=gen, dtype=torch.int32).to(dev)
            seg_s = L.lora_segments(shuffled, n)
            yield (f"lora_linear fwd+bwd {d}->{dff}, {n} adapters shuffled per token",
                   _fwd_bwd(lambda: L.lora_linear(x, W, None, A, B, seg_s, 2.0), ab, up),
                   _fwd_bwd(lambda: L.lora_linear_reference(x, W, None, A, B, shuffled, 2.0), ab, up), ref, {})
            yield (f"lora_segments, {T} tokens, 64 adapters", lambda: L.lora_segments(ids, 64), None, None, {})

    # ---- RMSNorm, SwiGLU ---------------------------------------------------------------------
    h = torch.randn(T, d, generator=gen).to(dev, dt).requires_grad_(True)
    w = (1 + 0.1 * torch.randn(d, generator=gen)).to(dev, dt).requires_grad_(True)
    uph = torch.randn(T, d, generator=gen).to(dev, dt)
    yield ("rms_norm fwd", lambda: rms_norm(h, w), lambda: rms_norm_reference(h, w), ref, {})
    yield ("rms_norm fwd+bwd", _fwd_bwd(lambda: rms_norm(h, w), [h, w], uph),
           _fwd_bwd(lambda: rms_norm_reference(h, w), [h, w], uph), ref, {})
    # The decode step's residual add + norm: 96 rows (one token each), fused vs add then fused norm.
    from ..kernels.add_rmsnorm import add_rms_norm

    xs, ds = (torch.randn(96, d, generator=gen).to(dev, dt) for _ in range(2))
    wd = w.detach()

    def add_then_norm():
        s = xs + ds
        return s, rms_norm(s, wd)

    yield ("add_rms_norm fwd, 96 decode rows", torch.no_grad()(lambda: add_rms_norm(xs, ds, wd)),
           torch.no_grad()(add_then_norm), "add, then rms_norm", {})
    g = torch.randn(T, dff, generator=gen).to(dev, dt).requires_grad_(True)
    u = torch.randn(T, dff, generator=gen).to(dev, dt).requires_grad_(True)
    yield ("swiglu fwd", lambda: swiglu(g, u), lambda: swiglu_reference(g, u), ref, {})
    yield ("swiglu fwd+bwd", _fwd_bwd(lambda: swiglu(g, u), [g, u], up),
           _fwd_bwd(lambda: swiglu_reference(g, u), [g, u], up), ref, {})

    # ---- cross-entropy over 32 ids, 64 tasks ----------------------------------------------------
    logits = torch.randn(T, 32, generator=gen).to(dev, dt).requires_grad_(True)
    labels = torch.randint(0, 32, (T,), generator=gen)
    labels[torch.rand(T, generator=gen) < 0.4] = -100
    labels = labels.to(dev)
    groups = _packed_ids(T, 64, gen).to(dev)
    wl = torch.ones(64, device=dev)
    yield ("grouped_cross_entropy fwd+bwd, V=32, 64 groups",
           _fwd_bwd(lambda: grouped_cross_entropy(logits, labels, groups, 64), [logits], wl),
           _fwd_bwd(lambda: grouped_cross_entropy_reference(logits, labels, groups, 64), [logits], wl), ref, {})

    # ---- RoPE on Qwen2.5-0.5B heads (14 q, 2 kv, head_dim 64) -------------------------------------
    cos, sin = rope_tables(64, 32768, base=1e6, dtype=dt, device=dev)
    pos = (torch.arange(T) % 2048).to(dev)
    q0 = torch.randn(T, 14 * 64, generator=gen).to(dev, dt).requires_grad_(True)
    k0 = torch.randn(T, 2 * 64, generator=gen).to(dev, dt).requires_grad_(True)
    upq, upk = torch.randn(T, 14, 64, device=dev, dtype=dt), torch.randn(T, 2, 64, device=dev, dtype=dt)
    qn, kn = q0.detach().view(T, 14, 64).clone(), k0.detach().view(T, 2, 64).clone()
    yield ("rope_ fwd (in place, q and k, no grad)", lambda: rope_(qn, kn, cos, sin, pos),
           lambda: rope_reference(qn, kn, cos, sin, pos), ref, {})
    yield ("rope_ fwd+bwd (after the copy that makes q, k non-leaf)",
           _fwd_bwd(lambda: rope_((q0 * 1).view(T, 14, 64), (k0 * 1).view(T, 2, 64), cos, sin, pos),
                    [q0, k0], (upq, upk)),
           _fwd_bwd(lambda: rope_reference((q0 * 1).view(T, 14, 64), (k0 * 1).view(T, 2, 64), cos, sin, pos),
                    [q0, k0], (upq, upk)), ref, {})


def _rows_gpu(ctx: Context) -> list[Row]:
    import torch

    T = 4096 if ctx.quick else 16384
    rows: list[Row] = []
    timed: dict = {}
    device = torch.cuda.get_device_name(0)
    for case, fast, base, base_name, extra in _gpu_cases(T):
        t = timed[id(fast)][0] if id(fast) in timed else _gpu_time_us(fast)
        timed[id(fast)] = (t, fast)  # holding fast keeps its id from being reused
        extra = {"tokens": T, "device": device, **extra}
        if "flops" in extra:
            extra["tflops"] = extra.pop("flops") / t / 1e6
        if "adapters" in extra:
            timed[("lin_fb", extra["adapters"])] = t
        rows.append(Row(BENCH, case, t, "us", base_name, _gpu_time_us(base) if base else None,
                        higher_is_better=False, extra=extra))
    for n in (16, 64):
        rows.append(Row(BENCH, f"lora_linear fwd+bwd: {n} adapters vs 1", timed[("lin_fb", n)], "us",
                        "same with 1 adapter", timed[("lin_fb", 1)], higher_is_better=False, bar=0.9,
                        extra={"tokens": T, "device": device}))
    return rows


def profile(T: int = 16384, only: str = "", iters: int = 5) -> None:
    """Per-kernel GPU time of each case's fast path (torch.profiler), against its do_bench time:
    a wall time far above the kernels' sum means the host, not the GPU, sets the pace."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from ..kernels import lora as L

    seen = []
    for case, fast, _, _, _ in _gpu_cases(T):
        if any(f is fast for f in seen) or (only and only not in case):
            continue
        seen.append(fast)
        wall = _gpu_time_us(fast)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            fast()
        host = (time.perf_counter() - t0) / iters * 1e6
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                fast()
            torch.cuda.synchronize()
        kernels = []
        for ev in prof.key_averages():
            t = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
            if t > 0:
                kernels.append((t / iters, ev.count // iters, ev.key))
        kernels.sort(reverse=True)
        total = sum(k[0] for k in kernels)
        print(f"\n{case}: do_bench {wall:.0f} us, host issue {host:.0f} us/iter, kernels {total:.0f} us")
        for t, c, name in kernels[:8]:
            print(f"  {t:8.1f} us  x{c}  {name[:90]}")
    for name in ("_seg_matmul_kernel", "_seg_weight_grad_kernel", "_lora_gemm_kernel"):
        k = getattr(L, name)._built
        for key, cfg in getattr(k, "cache", {}).items():
            print(f"autotune {name} {key[:4]} -> {cfg}")


def _rows_cpu(ctx: Context) -> list[Row]:
    import torch

    from ..kernels.lora import lora_delta_reference, lora_segments
    from ..kernels.rmsnorm import rms_norm_reference
    from ..kernels.swiglu import swiglu_reference

    T = 256 if ctx.quick else 2048
    d, dff, r = 64, 256, 8
    gen = torch.Generator().manual_seed(0)
    note = "CPU: reference path (what the trainer runs without a GPU); the Triton kernels need a GPU"
    rows = []
    x = torch.randn(T, d, generator=gen)
    for n in (1, 16):
        A, B = torch.randn(n, d, r, generator=gen), torch.randn(n, r, dff, generator=gen)
        ids = _packed_ids(T, n, gen, mean_len=max(8, T // 16))
        rows.append(Row(BENCH, f"lora_delta_reference fwd, {n} adapters, d={d}->{dff}, r={r}",
                        _cpu_time_us(lambda: lora_delta_reference(x, A, B, ids, 2.0)), "us",
                        extra={"tokens": T, "note": note}))
    rows.append(Row(BENCH, "lora_segments, 16 adapters", _cpu_time_us(lambda: lora_segments(ids, 16)), "us",
                    extra={"tokens": T, "note": note}))
    w = torch.ones(d)
    rows.append(Row(BENCH, f"rms_norm_reference fwd, d={d}", _cpu_time_us(lambda: rms_norm_reference(x, w)), "us",
                    extra={"tokens": T, "note": note}))
    g, u = torch.randn(T, dff, generator=gen), torch.randn(T, dff, generator=gen)
    rows.append(Row(BENCH, f"swiglu_reference fwd, {dff}", _cpu_time_us(lambda: swiglu_reference(g, u)), "us",
                    extra={"tokens": T, "note": note}))
    return rows


def run(ctx: Context) -> list[Row]:
    if ctx.device == "cuda":
        return _rows_gpu(ctx)
    return _rows_cpu(ctx)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="per-kernel GPU profile of the kernel benchmark cases")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("-k", dest="only", default="")
    args = ap.parse_args()
    profile(args.tokens, args.only)
