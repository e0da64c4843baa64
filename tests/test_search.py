"""Depth-first search (arcfast.infer.search.dfs) against the recursive full-forward reference, on random
tiny models made peaked enough that trees branch, get cut and finish."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from arcfast.arc import vocab as T
from arcfast.infer.decoding import GenerationConfig
from arcfast.infer.generate import Generator
from arcfast.lora.multi import LoRAConfig, MultiLoRA
from arcfast.model.config import ModelConfig
from arcfast.model.decoder import build_model
from arcfast.model.checkpoint import load_model
from arcfast.reference.search import dfs_reference
from arcfast.infer.search import SearchConfig, SearchStats, dfs

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_NEW = 8


def _model(seed: int, vocab: int = 16, token_ids=None, sharp: float = 6.0, eog: float = 2.0, device=None):
    """Random weights with a sharpened LM head (a random head gives nearly uniform next tokens, so no
    prefix would stay above any useful cutoff) and EOG made likelier, so completions end."""
    cfg = ModelConfig(vocab_size=vocab, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=48,
                      tie_embeddings=False, token_ids=token_ids)
    m = build_model(cfg, dtype=torch.float32, seed=seed, device=device)
    eog_id = T.EOG if token_ids is None else token_ids[T.EOG]
    with torch.no_grad():
        w = m.lm_head.weight
        w.mul_(sharp / w.norm(dim=1, keepdim=True).mean())
        w[eog_id] *= eog
    return m.eval()


def _prompts(seed: int, n: int = 4):
    rng = np.random.default_rng(seed)
    return [np.concatenate([[T.BOS], rng.integers(0, 13, size=int(rng.integers(3, 12))), [T.OUTPUT]])
            for _ in range(n)]


def _lora(model, n=2, seed=0):
    lora = MultiLoRA(model, LoRAConfig(r=4, alpha=8.0), n_adapters=n)
    with torch.no_grad():
        lora.weight.copy_(torch.randn(lora.weight.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)
    return lora


def _compare(found, ref, min_prob):
    """Same completions, log-probabilities and greedy flags; a completion within 1e-4 of the cutoff
    may fall on either side (the cached and the full forward differ in the last bits)."""
    edge = np.log(min_prob)
    got = {tuple(c.tokens.tolist()): c for c in found}
    want = {tuple(t.tolist()): (lp, g) for t, lp, g in ref}
    for key in set(got) ^ set(want):
        lp = got[key].logprob if key in got else float(np.sum(want[key][0], dtype=np.float64))
        assert abs(lp - edge) < 1e-4, f"completion {key} (log-prob {lp:.5f}) found by only one search"
    for key in set(got) & set(want):
        np.testing.assert_allclose(got[key].logprobs, want[key][0], atol=2e-5, rtol=1e-5)
        assert got[key].greedy == want[key][1]
    return len(set(got) & set(want))


@pytest.mark.parametrize("min_prob", [0.03, 0.1, 0.25])
def test_dfs_finds_what_the_reference_finds(min_prob):
    total = forks = 0
    for seed in range(3):
        m = _model(seed)
        prompts = _prompts(seed)
        st = SearchStats()
        out = dfs(m, prompts, config=SearchConfig(min_prob=min_prob, max_new_tokens=MAX_NEW), stats=st)
        assert len(out) == len(prompts)
        for p, found in zip(prompts, out):
            ref = dfs_reference(m, p, min_prob, max_new_tokens=MAX_NEW)
            total += _compare(found, ref, min_prob)
            for c in found:
                assert c.tokens[-1] == T.EOG and c.n_tokens <= MAX_NEW
                assert c.greedy or c.logprob >= np.log(min_prob) - 1e-4
            # the greedy completion (when it ends in time) first, the rest by log-probability
            rest = [c.logprob for c in found if not c.greedy]
            assert rest == sorted(rest, reverse=True)
            assert all(c.greedy for c in found[:sum(c.greedy for c in found)])
        forks += st.forks
        assert st.completions == sum(len(f) for f in out)
    # the comparison reached real trees: completions found, and branches taken
    assert total >= 3
    assert forks >= 1 if min_prob < 0.2 else True


def test_dfs_per_prompt_adapters_equal_the_reference():
    m = _model(5)
    lora = _lora(m, n=2, seed=1)
    prompts = _prompts(5, n=5)
    adapters = [0, 1, -1, 1, 0]
    out = dfs(m, prompts, adapters, lora, SearchConfig(min_prob=0.05, max_new_tokens=MAX_NEW))
    total = 0
    for p, a, found in zip(prompts, adapters, out):
        total += _compare(found, dfs_reference(m, p, 0.05, lora=lora, adapter=a, max_new_tokens=MAX_NEW), 0.05)
    assert total >= 3
    # the adapters matter: the same prompt through another adapter is searched differently
    base = dfs(m, prompts[:1], None, None, SearchConfig(min_prob=0.05, max_new_tokens=MAX_NEW))[0]
    assert [c.logprob for c in base] != [c.logprob for c in out[0]]


def test_dfs_on_a_full_vocabulary_model():
    ids = tuple(int(i) for i in np.random.default_rng(3).permutation(40)[:T.VOCAB_SIZE])
    m = _model(7, vocab=40, token_ids=ids)
    prompts = _prompts(7)
    out = dfs(m, prompts, config=SearchConfig(min_prob=0.05, max_new_tokens=MAX_NEW))
    total = sum(_compare(f, dfs_reference(m, p, 0.05, max_new_tokens=MAX_NEW), 0.05) for p, f in zip(prompts, out))
    assert total >= 2
    for f in out:
        for c in f:
            assert c.tokens.max() < T.VOCAB_SIZE       # compact ids out, as the generator gives


def test_greedy_completion_is_the_generators():
    m = _model(2, eog=3.0)
    prompts = _prompts(2, n=8)
    # min_prob 1: no prefix stays above the cutoff, so only the greedy path is followed
    out = dfs(m, prompts, config=SearchConfig(min_prob=1.0, max_new_tokens=MAX_NEW))
    gens = Generator(m).generate([p.astype(np.int32) for p in prompts], config=GenerationConfig(max_new_tokens=MAX_NEW))
    n_done = 0
    for found, g in zip(out, gens):
        if g.finished:
            assert len(found) == 1 and found[0].greedy
            np.testing.assert_array_equal(found[0].tokens, g.tokens)
            np.testing.assert_allclose(found[0].logprobs, g.logprobs, atol=1e-5)
            n_done += 1
        else:
            assert found == []
    assert n_done >= 2
    # without keep_greedy nothing is found at min_prob 1
    none = dfs(m, prompts, config=SearchConfig(min_prob=1.0, max_new_tokens=MAX_NEW, keep_greedy=False))
    assert all(f == [] for f in none)


def test_few_cache_rows_run_trees_in_waves_with_the_same_result():
    m = _model(1)
    prompts = _prompts(1, n=6)
    cfg = SearchConfig(min_prob=0.1, max_new_tokens=MAX_NEW)
    wide = dfs(m, prompts, config=cfg)
    narrow = dfs(m, prompts, config=cfg, max_rows=cfg.rows_per_tree)   # one tree at a time
    for a, b in zip(wide, narrow):
        assert [c.tokens.tolist() for c in a] == [c.tokens.tolist() for c in b]
        for x, y in zip(a, b):
            np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-5)


def test_caps_and_deadline():
    m = _model(0)
    prompts = _prompts(0)
    full = dfs(m, prompts, config=SearchConfig(min_prob=0.03, max_new_tokens=MAX_NEW))
    st = SearchStats()
    capped = dfs(m, prompts, config=SearchConfig(min_prob=0.03, max_new_tokens=MAX_NEW, max_live=2), stats=st)
    assert st.dropped_live > 0
    for a, b in zip(full, capped):
        assert {tuple(c.tokens.tolist()) for c in b} <= {tuple(c.tokens.tolist()) for c in a}
    st = SearchStats()
    out = dfs(m, prompts, config=SearchConfig(min_prob=0.03, max_new_tokens=MAX_NEW), deadline=time.monotonic() - 1,
              stats=st)
    assert out == [[] for _ in prompts] and st.cut_by_deadline == len(prompts)


def test_bad_input_is_named():
    m = _model(0)
    with pytest.raises(ValueError, match="prompt 1"):
        dfs(m, [np.array([1, 2]), np.array([1, 99])])
    with pytest.raises(ValueError, match="adapter_ids"):
        dfs(m, [np.array([1, 2])], adapter_ids=[0, 1])
    with pytest.raises(ValueError, match="no LoRA was given"):
        dfs(m, [np.array([1, 2])], adapter_ids=[0])
    with pytest.raises(ValueError, match="min_prob"):
        SearchConfig(min_prob=0.0)


def test_cutoff_grows_the_set_monotonically():
    m = _model(4)
    prompts = _prompts(4)
    sets = []
    for p in (0.3, 0.1, 0.03):
        out = dfs(m, prompts, config=SearchConfig(min_prob=p, max_new_tokens=MAX_NEW))
        sets.append([{tuple(c.tokens.tolist()) for c in f} for f in out])
    for lo, hi in zip(sets, sets[1:]):
        for a, b in zip(lo, hi):
            assert a <= b
    assert sum(map(len, sets[-1])) > sum(map(len, sets[0]))


def test_model_is_not_modified():
    m = _model(3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    dfs(m, _prompts(3), config=SearchConfig(min_prob=0.1, max_new_tokens=MAX_NEW))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_config_copy_is_independent():
    cfg = SearchConfig(min_prob=0.2)
    assert dataclasses.replace(cfg, min_prob=0.5).rows_per_tree == 3 and cfg.rows_per_tree == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dfs_on_cuda_finds_what_the_cpu_search_finds():
    cfg = SearchConfig(min_prob=0.05, max_new_tokens=MAX_NEW)
    prompts = _prompts(3, n=6)
    adapters = [0, 1, -1, 0, 1, -1]
    cpu_model = _model(3, device="cpu")
    cpu = dfs(cpu_model, prompts, adapters, _lora(cpu_model), cfg)
    gpu_model = _model(3, device="cpu").to("cuda")   # the same weights (each device draws its own)
    gpu = dfs(gpu_model, prompts, adapters, _lora(gpu_model), cfg)
    assert sum(_compare(g, [(c.tokens, c.logprobs, c.greedy) for c in c_], 0.05) for g, c_ in zip(gpu, cpu)) >= 6


def test_the_default_cap_never_cuts_a_completion():
    """On a real task through the shipped starter model, a search at P = 0.001 finds more than 64
    outputs: the default search finds every one an uncapped search finds, where the old fixed cap
    of 64 dropped some."""
    from arcfast.arc.loading import load_tasks
    from arcfast.models import shipped_model
    from arcfast.infer.predict import max_output_tokens
    from arcfast.samples.prompts import build_inference_prompt

    if shipped_model("starter") is None:
        pytest.skip("the starter model is not installed")
    m = load_model("starter").eval()
    task = load_tasks("arc1:eval[:1]")[0]          # 00576224: small grids, many likely outputs
    prompts = [build_inference_prompt(task, 0)]
    cfg = SearchConfig(min_prob=0.001, max_new_tokens=max_output_tokens(task))
    assert cfg.max_candidates is None and cfg.candidate_cap == 1001
    run = lambda c, st=None: [tuple(x.tokens.tolist()) for x in dfs(m, prompts, config=c, stats=st)[0]]
    default = run(cfg)
    uncapped = run(SearchConfig(min_prob=0.001, max_new_tokens=cfg.max_new_tokens, max_candidates=10 ** 9))
    st = SearchStats()
    old = run(SearchConfig(min_prob=0.001, max_new_tokens=cfg.max_new_tokens, max_candidates=64), st)
    assert len(uncapped) > 64                       # the old cap had something to cut ...
    assert len(old) < len(uncapped) and st.capped == 1   # ... and cut it
    assert default == uncapped
    with pytest.raises(ValueError, match="max_candidates"):
        SearchConfig(max_candidates=0)


def test_prefill_is_planned_against_the_deadline():
    """A deadline too close for the first prompt's prefill, at the rate given, starts no prefill;
    without a rate, a short probe measures one first."""
    m = _model(2)
    prompts = [np.concatenate([[T.BOS], np.arange(600) % 13, [T.OUTPUT]])] * 3
    st = SearchStats(prefill_s_per_token=1.0)                  # 600 s per prompt: nothing fits
    out = dfs(m, prompts, config=SearchConfig(min_prob=0.1, max_new_tokens=MAX_NEW),
              deadline=time.monotonic() + 30, stats=st)
    assert out == [[], [], []] and st.cut_by_deadline == 3 and st.prefill_s == 0.0
    st = SearchStats()
    out = dfs(m, prompts, config=SearchConfig(min_prob=0.1, max_new_tokens=MAX_NEW),
              deadline=time.monotonic() + 60, stats=st)
    assert st.prefill_s_per_token > 0 and all(out) and st.cut_by_deadline == 0
