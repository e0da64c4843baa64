"""Fast paths fail safe: each one, made to raise where it runs (as a Triton compile error on an older
GPU or a failed graph capture would), is switched off for the rest of the run with one logged line
saying which and why, the work is redone on the plain path, and the run still writes a complete
submission: the same adapters as a run on the plain paths from the start."""
from __future__ import annotations

import functools
import json
import logging

import numpy as np
import pytest
import torch

import arcfast.kernels.cross_entropy as ce_kernel
import arcfast.kernels.rmsnorm as rms_kernel
import arcfast.lora.decode as decode_mod
import arcfast.lora.multi as multi_mod
import arcfast.model.attention as attn_mod
import arcfast.train.trainer as trainer_mod
from arcfast import runtime
from arcfast.answers.submission import validate_submission
from arcfast.arc.loading import load_tasks
from arcfast.infer.generate import Generator, _CaptureFailed
from arcfast.lora.multi import LoRAConfig, MultiLoRA
from arcfast.model.attention import PackedAttention, packed_mask, sdpa
from arcfast.model.config import preset
from arcfast.model.decoder import build_model, init_weights
from arcfast.run.config import TTFTConfig
from arcfast.run.ttft import TTFTRun

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = "arc1:eval[:2]"
BROKEN = "simulated: no kernel image is available for execution on the device"
# The plain paths a run takes on the CPU, each fast one swapped in by a scenario below.
PLAIN = dict(ops="torch", loss="torch", lora_path="torch", attention="sdpa")


def _raise(*args, **kwargs):
    raise RuntimeError(BROKEN)


# A kernel whose forward runs and whose backward raises, as a Triton backward kernel that does not
# compile would. Compiled under the kernels' file name: that is where such an error is raised.
_BROKEN_BACKWARD = compile('''
import torch


class BrokenBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        return rms_norm_reference(x, weight, eps)

    @staticmethod
    def backward(ctx, dy):
        raise RuntimeError(BROKEN)


def rms_norm(x, weight, eps=1e-6):
    return BrokenBackward.apply(x, weight, eps)
''', rms_kernel.__file__, "exec")


def _broken_backward_rms_norm():
    ns = {"rms_norm_reference": rms_kernel.rms_norm_reference, "BROKEN": BROKEN}
    exec(_BROKEN_BACKWARD, ns)
    return ns["rms_norm"]


def _train_config(monkeypatch, **fast):
    """Every TrainConfig the run builds takes the plain paths, but for ``fast``."""
    monkeypatch.setattr(trainer_mod, "TrainConfig", functools.partial(trainer_mod.TrainConfig, **{**PLAIN, **fast}))


def _run(out):
    cfg = TTFTConfig(tasks=TASKS, model="tiny", budget=300.0, out=str(out), steps=2, tasks_per_group=2,
                     predictions=2, max_new_tokens=24, row_len=2048, max_len=2048, progress=False)
    return TTFTRun(cfg).run()


def _adapters(out, tasks) -> dict:
    from safetensors.torch import load_file

    return {t.id: load_file(str(out / "adapters" / t.id / "adapter_model.safetensors")) for t in tasks}


def _events(out, kind):
    return [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == kind]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The run with every fast path off from the start."""
    out = tmp_path_factory.mktemp("plain")
    mp = pytest.MonkeyPatch()
    try:
        _train_config(mp)
        for name in runtime.FAST_PATHS:
            runtime.switch_off(name, RuntimeError("off for the reference run"))
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        summary = _run(out)
        torch.set_num_threads(n)
    finally:
        mp.undo()
        runtime.reset_fast_paths()
    tasks = load_tasks(TASKS)
    return {"summary": summary, "adapters": _adapters(out, tasks),
            "submission": json.loads((out / "submission.json").read_text())}


def _break_triton_forward(mp):
    _train_config(mp, ops="triton", loss="triton")
    mp.setattr(rms_kernel, "rms_norm", _raise)
    mp.setattr(ce_kernel, "grouped_cross_entropy", _raise)


def _break_triton_backward(mp):
    _train_config(mp, ops="triton")
    mp.setattr(rms_kernel, "rms_norm", _broken_backward_rms_norm())


def _break_grouped(mp):
    _train_config(mp, lora_path="grouped")
    mp.setattr(multi_mod, "lora_delta_grouped", _raise)


def _break_flex(mp):
    _train_config(mp, attention="flex")
    mp.setattr(attn_mod, "_flex_fn", lambda compiled: _raise)


def _break_fused_decode(mp):
    _train_config(mp)
    mp.setattr(decode_mod._MergedLoRA, "qkv", _raise)
    mp.setattr(decode_mod._FusedRowLoRA, "_linear", _raise)


SCENARIOS = {
    "triton, forward": ("triton", _break_triton_forward),
    "triton, backward": ("triton", _break_triton_backward),
    "grouped_gemm": ("grouped_gemm", _break_grouped),
    "flex_attention": ("flex_attention", _break_flex),
    "fused_decode": ("fused_decode", _break_fused_decode),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_fast_path_that_raises_is_switched_off_and_the_run_completes(scenario, plain_run, tmp_path, monkeypatch,
                                                                       caplog):
    name, breaks = SCENARIOS[scenario]
    breaks(monkeypatch)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="arcfast.runtime"):
        summary = _run(out)
    tasks = load_tasks(TASKS)
    # A complete submission, every task trained, nothing failed.
    assert summary["failed"] == [] and summary["trained"] == len(tasks)
    assert set(validate_submission(out / "submission.json", tasks)) == {t.id for t in tasks}
    # The same adapters as the plain run: each step that hit the broken path was redone plainly.
    got = _adapters(out, tasks)
    for t in tasks:
        a, b = got[t.id], plain_run["adapters"][t.id]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (scenario, t.id)
    if name == "fused_decode":   # decoding ran the plain path from its first step too
        assert json.loads((out / "submission.json").read_text()) == plain_run["submission"]
    # Said once: the log line, the event, the summary.
    lines = [r.getMessage() for r in caplog.records if "fast path off" in r.getMessage()]
    assert len(lines) == 1 and name in lines[0] and BROKEN in lines[0]
    assert [(e["path"], BROKEN in e["error"]) for e in _events(out, "fast_path_off")] == [(name, True)]
    assert list(summary["fast_paths_off"]) == [name] and BROKEN in summary["fast_paths_off"][name]


def test_with_fallback_switches_off_once_and_keeps_out_of_memory():
    calls = []

    def fast(x):
        calls.append(x)
        raise RuntimeError("compile error")

    f = runtime.with_fallback("triton", fast, lambda x: x + 1)
    assert f(1) == 2 and f(2) == 3 and calls == [1]      # off after the first failure
    assert not runtime.fast_path("triton") and "compile error" in runtime.fast_paths_off()["triton"]
    oom = runtime.with_fallback("grouped_gemm", lambda: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("CUDA out of memory")),
                                lambda: "plain")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        oom()
    assert runtime.fast_path("grouped_gemm")             # the work's size, not a broken path


def test_fast_path_of_names_the_path_from_the_traceback():
    try:
        _broken_backward_rms_norm()(torch.ones(2, 4, requires_grad=True), torch.ones(4)).sum().backward()
    except RuntimeError as e:
        assert runtime.fast_path_of(e) == "triton"
    else:
        pytest.fail("the broken backward did not raise")
    try:
        _raise()
    except RuntimeError as e:
        assert runtime.fast_path_of(e) is None


def test_varlen_attention_that_raises_falls_back_to_the_dense_mask(monkeypatch):
    """Varlen needs CUDA to run; its fallback is checked on the CPU with the kernel made to raise."""
    g = torch.Generator().manual_seed(0)
    R, L, H, D = 2, 12, 2, 8
    sample_ids = torch.tensor([[0] * 5 + [1] * 7, [2] * 9 + [-1] * 3])
    q, k, v = (torch.randn(R, L, H, D, generator=g) for _ in range(3))
    att = PackedAttention.__new__(PackedAttention)
    att.impl, att.sample_ids = "varlen", sample_ids
    att.cu_seqlens, att.max_seqlen = torch.tensor([0, 5, 12, 21, 24], dtype=torch.int32), 9
    monkeypatch.setattr(attn_mod, "_varlen_fn", lambda: (_raise, "is_causal", True))
    got = att(q, k, v)
    want = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=packed_mask(sample_ids)).transpose(1, 2)
    torch.testing.assert_close(got, want)
    assert att.impl == "sdpa" and list(runtime.fast_paths_off()) == ["varlen_attention"]
    # Off for the run: a new attention asked for varlen gets the dense mask.
    assert PackedAttention(sample_ids, impl="varlen", cu_seqlens=np.array([0, 5, 12, 21, 24])).impl == "sdpa"


@pytest.fixture
def tiny_lora():
    model = build_model(preset("tiny"), dtype=torch.float32, device="cpu")
    init_weights(model, seed=1, std=0.3)
    lora = MultiLoRA(model, LoRAConfig(r=4, alpha=8.0), n_adapters=3)
    with torch.no_grad():
        lora.weight.copy_(torch.randn(lora.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.3)
    return model, lora


def _prompts(n, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 10, size=int(rng.integers(6, 14))).astype(np.int32) for _ in range(n)]


def test_decode_graph_capture_that_fails_runs_the_steps_eagerly(tiny_lora, monkeypatch):
    """A decode step that cannot be captured (CUDA graphs need a GPU: the capture is made to fail)
    runs eagerly: the same tokens as a generator without graphs."""
    model, lora = tiny_lora
    prompts, ids = _prompts(4, 1), [0, 1, -1, 2]
    want = Generator(model, lora).generate(prompts, ids, max_new_tokens=6, stop_on_eog=False)
    gen = Generator(model, lora)
    gen.cuda_graphs = True

    def capture(*a, **kw):
        raise _CaptureFailed("capturing a decode step: RuntimeError: operation not permitted when stream is capturing")

    monkeypatch.setattr(gen, "_capture", capture)
    got = gen.generate(prompts, ids, max_new_tokens=6, stop_on_eog=False)
    for x, y in zip(got, want):
        np.testing.assert_array_equal(x.tokens, y.tokens)
        np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=0, atol=1e-6)
    assert not gen.cuda_graphs and list(runtime.fast_paths_off()) == ["cuda_graphs"]


def test_a_graphed_training_step_that_fails_runs_eagerly():
    """The trainer's replayed step (a GPU's) made to fail: the step runs eagerly, with the update
    a trainer without graphs makes."""
    from test_trainer import LCFG, make_sample, train_cfg
    from arcfast.model.checkpoint import load_model
    from arcfast.train.trainer import Trainer, pack_samples

    model = load_model("tiny", seed=0)
    rng = np.random.default_rng(3)
    batch = pack_samples([make_sample(rng, a, n) for a, n in ((0, 20), (1, 28), (0, 12))], row_len=64)
    plain, graphed = (Trainer(model, LCFG, train_cfg(), 2) for _ in range(2))
    for t in (plain, graphed):
        t.reset_adapters(range(2), seeds=[4, 5], total_steps=6)

    class Broken:
        reason = "CUDA graphs"

        def step(self, batch):
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    graphed._graphed = Broken()
    a, b = plain.step(batch), graphed.step(batch)
    np.testing.assert_array_equal(a.loss, b.loss)
    assert torch.equal(plain.lora.weight, graphed.lora.weight)
    assert graphed._graphed is None and list(runtime.fast_paths_off()) == ["cuda_graphs"]
