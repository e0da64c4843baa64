"""Adapters' own embedding and LM-head rows (LoRAConfig.tokens) in generation, search and scoring:
against the references (each prompt alone through the model's own full forward), and against a
copy of the model whose own rows are the adapter's (no adapter at all)."""
import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from arcfast.arc import vocab as T
from arcfast.infer.decoding import GenerationConfig
from arcfast.infer.generate import Generator
from arcfast.lora.multi import LoRAConfig, MultiLoRA
from arcfast.model.decoder import Linear, build_model, init_weights
from arcfast.model.config import preset
from arcfast.reference.generate import greedy_reference
from arcfast.reference.score import target_logprobs_reference
from arcfast.reference.search import dfs_reference
from arcfast.infer.logprobs import Sequences, target_logprobs
from arcfast.infer.search import SearchConfig, dfs

pytestmark = pytest.mark.usefixtures("one_thread")

LP_TOL = 2e-4
BOTH = ("embed_tokens", "lm_head")
# compact and tied / compact with its own head / a full vocabulary (tied: one shared table) / full, untied
KINDS = {"compact": {}, "untied": {"tie_embeddings": False},
         "full": {"vocab_size": 48, "token_ids": tuple(range(8, 28))},
         "full-untied": {"vocab_size": 48, "token_ids": tuple(range(8, 28)), "tie_embeddings": False}}


def _model(kind: str):
    torch.manual_seed(0)
    m = build_model(replace(preset("tiny"), **KINDS[kind]), device="cpu", dtype=torch.float32)
    init_weights(m, seed=1, std=0.3)
    return m.eval()


def _lora(model, tokens=BOTH, n: int = 3, lora_std: float = 0.3, seed: int = 0) -> MultiLoRA:
    """``n`` adapters: random A and B (std ``lora_std``; 0 leaves the projections alone) and token
    rows far from the model's own (a fresh draw each)."""
    lora = MultiLoRA(model, LoRAConfig(r=4, alpha=8.0, tokens=tokens), n_adapters=n)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        t = lora.get(i)
        t = {k: (v[0], torch.randn(v[1].shape, generator=g) * lora_std) if isinstance(v, tuple)
             else torch.randn(v.shape, generator=g) * 0.3 for k, v in t.items()}
        lora.set(i, t)
    return lora


def _prompts(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [np.concatenate([[T.BOS], rng.integers(0, 13, size=int(rng.integers(3, 30))), [T.OUTPUT]]).astype(np.int32)
            for _ in range(n)]


def _with_rows(model, lora: MultiLoRA, i: int):
    """A copy of ``model`` whose own embedding / head rows are adapter ``i``'s (the head untied
    first where the adapter gives it rows of its own)."""
    m = copy.deepcopy(model)
    rows = torch.as_tensor(lora.token_rows)
    got = lora.get(i)
    head = got.get("lm_head", got.get("model.embed_tokens") if lora.tokens_shared else None)
    with torch.no_grad():
        if head is not None and m.lm_head is None:
            m.lm_head = Linear(m.config.hidden_size, m.config.vocab_size, False)
            m.lm_head.weight = nn.Parameter(m.model.embed_tokens.weight.detach().clone())
            m.lm_head.name = "lm_head"
            m.model.embed_tokens.weight = nn.Parameter(m.model.embed_tokens.weight.detach().clone())
            m.config = replace(m.config, tie_embeddings=False)
        if "model.embed_tokens" in got:
            m.model.embed_tokens.weight[rows] = got["model.embed_tokens"]
        if head is not None:
            m.lm_head.weight[rows] = head
    return m


@pytest.mark.parametrize("kind", list(KINDS))
def test_token_rows_alone_are_a_model_with_those_rows(kind):
    """An adapter that trains only token rows (B = 0) decodes as the model whose own rows are the
    adapter's: the prompt's embedding, each generated token's, and the head."""
    m = _model(kind)
    lora = _lora(m, lora_std=0.0)
    prompts = _prompts(4)
    gen = Generator(m, lora=lora)
    cfg = GenerationConfig(max_new_tokens=8, stop_on_eog=False)
    for a in range(lora.n_adapters):
        out = gen.generate(prompts, [a] * len(prompts), cfg)
        base = Generator(_with_rows(m, lora, a)).generate(prompts, None, cfg)
        plain = Generator(m).generate(prompts, None, cfg)
        assert any(o.tokens.tolist() != p.tokens.tolist() or not np.allclose(o.logprobs, p.logprobs, atol=1e-3)
                   for o, p in zip(out, plain))                  # the rows change the output...
        for o, b in zip(out, base):                               # ...as the model with those rows
            assert o.tokens.tolist() == b.tokens.tolist()
            np.testing.assert_allclose(o.logprobs, b.logprobs, rtol=0, atol=LP_TOL)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("tokens", [BOTH, ("embed_tokens",), ("lm_head",)])
def test_mixed_adapters_decode_as_each_alone(kind, tokens):
    """Prompts of three adapters and of the base model in one batch, every decode LoRA mode this
    machine runs: each prompt as the full-forward reference decodes it alone."""
    if kind.startswith("full") and "embed_tokens" not in tokens and not kind.endswith("untied"):
        with pytest.raises(ValueError, match="train embed_tokens"):
            _lora(_model(kind), tokens)
        return
    m = _model(kind)
    lora = _lora(m, tokens)
    prompts = _prompts(8, seed=1)
    ids = [0, 1, 2, -1, 2, 0, -1, 1]
    cfg = GenerationConfig(max_new_tokens=8, stop_on_eog=False)

    def alone(p, a):
        """The prompt decoded alone: the full-forward reference (compact ids only), else the
        generator with no other prompt (checked against a model with the rows above)."""
        if m.config.token_ids is None:
            return greedy_reference(m, p, lora, a, max_new_tokens=8, stop_on_eog=False)
        g = Generator(m, lora=lora).generate([p], [a], cfg)[0]
        return g.tokens, g.logprobs

    refs = [alone(p, a) for p, a in zip(prompts, ids)]
    for fuse in (True, False):
        out = Generator(m, lora=lora, fuse_lora=fuse).generate(prompts, ids, cfg)
        for o, (ref_t, ref_lp) in zip(out, refs):
            assert o.tokens.tolist() == ref_t.tolist()
            np.testing.assert_allclose(o.logprobs, ref_lp, rtol=0, atol=LP_TOL)
    # One adapter for every prompt: the merged decode path.
    out = Generator(m, lora=lora).generate(prompts, [1] * len(prompts), cfg)
    for o, p in zip(out, prompts):
        ref_t, ref_lp = alone(p, 1)
        assert o.tokens.tolist() == ref_t.tolist()
        np.testing.assert_allclose(o.logprobs, ref_lp, rtol=0, atol=LP_TOL)


@pytest.mark.parametrize("kind", ["compact", "untied"])
def test_greedy_reference_with_rows_is_the_model_with_rows(kind):
    """The reference itself, with B = 0, against the model whose rows are the adapter's."""
    m = _model(kind)
    lora = _lora(m, lora_std=0.0)
    for p in _prompts(3, seed=2):
        t, lp = greedy_reference(m, p, lora, 2, max_new_tokens=6, stop_on_eog=False)
        t2, lp2 = greedy_reference(_with_rows(m, lora, 2), p, max_new_tokens=6, stop_on_eog=False)
        assert t.tolist() == t2.tolist()
        np.testing.assert_allclose(lp, lp2, rtol=0, atol=LP_TOL)


@pytest.mark.parametrize("kind", ["compact", "untied", "full"])
def test_dfs_with_token_rows_finds_what_the_reference_finds(kind):
    m = _model(kind)
    lora = _lora(m)
    prompts = _prompts(4, seed=3)
    ids = [0, 2, -1, 1]
    found = dfs(m, prompts, ids, lora, SearchConfig(min_prob=0.05, max_new_tokens=6))
    n = 0
    for p, a, f in zip(prompts, ids, found):
        ref = dfs_reference(m, p, 0.05, lora=lora, adapter=a, max_new_tokens=6)
        assert sorted(tuple(c.tokens.tolist()) for c in f) == sorted(tuple(r[0].tolist()) for r in ref)
        by = {tuple(r[0].tolist()): r[1] for r in ref}
        for c in f:
            np.testing.assert_allclose(c.logprobs, by[tuple(c.tokens.tolist())], rtol=0, atol=LP_TOL)
            n += 1
    assert n > 0


@pytest.mark.parametrize("kind", ["compact", "untied", "full"])
def test_scores_with_token_rows_equal_the_reference(kind):
    m = _model(kind)
    lora = _lora(m)
    rng = np.random.default_rng(4)
    prompts = _prompts(5, seed=4)
    targets = [np.concatenate([rng.integers(0, 10, size=int(rng.integers(2, 9))), [T.EOG]]).astype(np.int32)
               for _ in prompts]
    ids = np.array([0, 1, 2, -1, 1])
    got = target_logprobs(m, lora, Sequences(prompts, targets, ids))
    for i, (p, t, a) in enumerate(zip(prompts, targets, ids)):
        ref = target_logprobs_reference(m, p, t, lora, int(a))
        np.testing.assert_allclose(got[i], ref, rtol=0, atol=LP_TOL)
    plain = target_logprobs_reference(m, prompts[0], targets[0])
    assert np.abs(got[0] - plain).max() > 1e-3        # adapter 0's rows change the scores


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("tokens", [BOTH, ("embed_tokens",), ("lm_head",)])
def test_merged_adapter_with_token_rows_computes_what_the_adapter_did(tmp_path, kind, tokens):
    """merge_adapter writes the rows into the model (untying a tied head given rows of its own):
    the merged model's plain forward is the model with the adapter attached."""
    from arcfast.lora.adapters import merge_adapter, save_adapter

    if kind.startswith("full") and "embed_tokens" not in tokens and not kind.endswith("untied"):
        return   # refused when made (test_mixed_adapters_decode_as_each_alone)
    m = _model(kind)
    lora = _lora(m, tokens, n=1)
    path = save_adapter(tmp_path / "a", lora.get(0), lora.cfg, token_ids=lora.peft_token_ids())
    merged = copy.deepcopy(m)
    names = merge_adapter(merged, path)
    assert {"model.embed_tokens", "lm_head"} & set(names)
    ids = torch.as_tensor(m.config.model_ids(np.stack(_prompts(1, seed=5) * 2)[:, :6].astype(np.int64)))
    with torch.no_grad():
        step = lora.begin(np.zeros(ids.shape, np.int32), m.dtype, "torch", training=False)
        want = m.logits(m(ids, lora=step), step.tokens, step.tokens.adapter_ids.view(ids.shape))
        got = merged.logits(merged(ids))
        plain = m.logits(m(ids))
    assert (want - plain).abs().max() > 1e-2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
