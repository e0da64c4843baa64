"""arcfast.infer.generate against its references: the model's own full forward (no cache), transformers
``generate`` with the adapter loaded through PEFT, and itself run one prompt at a time."""
import numpy as np
import pytest
import torch

from arcfast.arc import vocab as T
from arcfast.arc.formats import DecodeStatus
from arcfast.lora.decode import _RowLoRA
from arcfast.infer.decoding import MAX_NEW_TOKENS, Generation, GenerationConfig, choose_tokens
from arcfast.infer.generate import Generator, generate
from arcfast.infer.predict import predict_task, predict_tasks
from arcfast.lora.multi import LoRAConfig, MultiLoRA
from arcfast.model.decoder import build_model, init_weights
from arcfast.model.config import preset
from arcfast.reference.generate import greedy_reference, hf_generate, hf_with_adapter
from arcfast.arc.task import Pair, Task
from arcfast.answers.vote import vote
from scripted import TOKEN_LOGPROB, ScriptedGenerator, augment_like, encode, turn

pytestmark = pytest.mark.usefixtures("one_thread")

LP_TOL = 2e-4


def _model(eog_boost: float = 1.0, seed: int = 1):
    # A large init std spreads the logits, so greedy ties (which could break differently between
    # two correct implementations) are vanishingly unlikely.
    torch.manual_seed(0)
    m = build_model(preset("tiny"), device="cpu", dtype=torch.float32)
    init_weights(m, seed=seed, std=0.3)
    with torch.no_grad():
        m.model.embed_tokens.weight[T.EOG] *= eog_boost  # tied head: a larger EOG row ends grids sooner
    return m.eval()


def _lora(model, n: int = 3, seed: int = 0):
    lora = MultiLoRA(model, LoRAConfig(r=4, alpha=8.0), n_adapters=n)
    with torch.no_grad():
        lora.weight.copy_(torch.randn(lora.weight.shape, generator=torch.Generator().manual_seed(seed)) * 0.3)
    return lora


def _prompts(n: int, seed: int = 0, lo: int = 3, hi: int = 40):
    rng = np.random.default_rng(seed)
    return [np.concatenate([[T.BOS], rng.integers(0, 13, size=int(rng.integers(lo, hi))), [T.OUTPUT]]).astype(np.int32)
            for _ in range(n)]


def _family_model(family: str, qkv_bias: bool, n_adapters: int):
    """The tiny preset as another family (Qwen3: q/k norms), with a LoRA on q, v and up only."""
    from dataclasses import replace

    cfg = replace(preset("tiny"), family=family, qkv_bias=qkv_bias, qk_norm=family == "qwen3", name=family)
    m = build_model(cfg, device="cpu", dtype=torch.float32)
    init_weights(m, seed=2, std=0.3)
    lora = MultiLoRA(m, LoRAConfig(r=4, alpha=8.0, targets=("q_proj", "v_proj", "up_proj")), n_adapters=n_adapters)
    with torch.no_grad():
        lora.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(3))
    return m, lora


def _same(a: Generation, tokens, logprobs):
    assert a.tokens.dtype == np.int32 and a.logprobs.dtype == np.float32
    assert a.tokens.tolist() == list(np.asarray(tokens).tolist())
    np.testing.assert_allclose(a.logprobs, logprobs, rtol=0, atol=LP_TOL)


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def eog_model():
    return _model(eog_boost=2.5)


def test_cached_decoding_equals_full_forward(model):
    prompts = _prompts(7)
    # max_batch 3 with 7 prompts: refills and compactions run too.
    outs = generate(model, prompts, max_new_tokens=12, max_batch=3)
    for p, o in zip(prompts, outs):
        _same(o, *greedy_reference(model, p, max_new_tokens=12))
        assert o.n_tokens == 12 and not o.finished


def test_mixed_adapters_equal_full_forward_and_each_alone(model):
    lora = _lora(model)
    prompts = _prompts(9, seed=1)
    adapters = [-1, 0, 1, 2, 0, 1, 2, -1, 0]
    gen = Generator(model, lora=lora)
    mixed = gen.generate(prompts, adapters, max_new_tokens=10)
    assert gen.stats.lora_modes.get("gather", 0) >= 1
    for a in sorted(set(adapters)):
        idx = [i for i, x in enumerate(adapters) if x == a]
        alone = gen.generate([prompts[i] for i in idx], [a] * len(idx), max_new_tokens=10)
        for i, o in zip(idx, alone):
            _same(mixed[i], o.tokens, o.logprobs)
            _same(o, *greedy_reference(model, prompts[i], lora, a, max_new_tokens=10))
    # The adapters really change the outputs (otherwise the test above proves little).
    firsts = {tuple(generate(model, prompts[:1], [a], lora=lora, max_new_tokens=10)[0].tokens) for a in (-1, 0, 1, 2)}
    assert len(firsts) > 1


def test_batched_equals_one_by_one(eog_model):
    prompts = _prompts(6, seed=2)
    batched = generate(eog_model, prompts, max_new_tokens=20)
    gen = Generator(eog_model)
    for p, b in zip(prompts, batched):
        (o,) = gen.generate([p], max_new_tokens=20)
        _same(b, o.tokens, o.logprobs)


def test_stops_at_eog(eog_model):
    # Lengths far apart and a small batch: rows finish out of order, are compacted and refilled,
    # and the attention span bucket (64 slots on the CPU) must follow the longest live row.
    prompts = _prompts(8, seed=3, hi=150)
    outs = generate(eog_model, prompts, max_new_tokens=30, max_batch=3)
    forced = generate(eog_model, prompts, max_new_tokens=30, stop_on_eog=False)
    n_stopped = 0
    for p, o, f in zip(prompts, outs, forced):
        ref = greedy_reference(eog_model, p, max_new_tokens=30)
        _same(o, *ref)
        eogs = np.flatnonzero(o.tokens == T.EOG)
        if o.finished:
            n_stopped += 1
            assert eogs.tolist() == [o.n_tokens - 1]
        else:
            assert eogs.size == 0 and o.n_tokens == 30
        # Forced length: the same tokens, then on past the EOG.
        assert f.n_tokens == 30 and f.tokens[:o.n_tokens].tolist() == o.tokens.tolist()
        _same(f, *greedy_reference(eog_model, p, max_new_tokens=30, stop_on_eog=False))
    assert 0 < n_stopped < len(prompts)  # both cases met


@pytest.mark.parametrize("max_new", [1, 3])
def test_max_new_tokens_respected(eog_model, max_new):
    outs = generate(eog_model, _prompts(5, seed=4), max_new_tokens=max_new, stop_on_eog=False)
    assert [o.n_tokens for o in outs] == [max_new] * 5
    outs = generate(eog_model, _prompts(5, seed=4), max_new_tokens=max_new)
    assert all(1 <= o.n_tokens <= max_new for o in outs)
    assert GenerationConfig().max_new_tokens == MAX_NEW_TOKENS == 931


def test_agrees_with_transformers_generate_with_peft_adapter(model):
    from arcfast.model.hf import to_hf

    lora = _lora(model, n=2, seed=5)
    prompts = _prompts(4, seed=5)
    ours = generate(model, prompts, [1] * 4, lora=lora, max_new_tokens=12)
    hf = hf_with_adapter(to_hf(model), lora, 1)
    theirs = hf_generate(hf, prompts, max_new_tokens=12)
    for o, (t, lp) in zip(ours, theirs):
        _same(o, t, lp)
    base = hf_generate(to_hf(model), prompts, max_new_tokens=12)
    assert [b[0].tolist() for b in base] != [o.tokens.tolist() for o in ours]  # the adapter mattered
    for o, (t, lp) in zip(generate(model, prompts, max_new_tokens=12), base):
        _same(o, t, lp)


def test_row_lora_equals_lora_step(model):
    """The decode-time LoRA (graph-safe routing) computes what the trainer's LoRAStep computes."""
    lora = _lora(model, n=3, seed=6)
    gen = Generator(model, lora=lora, max_batch=8, merge_single=False)
    gen._ensure(64, 4)
    with torch.inference_mode():
        gen.adapters.flat[:3].copy_(lora.weight)
        name = "model.layers.1.mlp.down_proj"
        layer = model.get_submodule(name)
        x = torch.randn(8, 1, layer.in_features, generator=torch.Generator().manual_seed(0))
        for ids in ([2] * 8, [0, 1, 2, -1, 2, 1, 0, -1]):
            n = len(ids)
            mode = gen.adapters.route(n, 8, np.array([a if a >= 0 else 3 for a in ids]))
            assert mode == ("single" if len(set(ids)) == 1 else "gather")
            got = _RowLoRA(gen.adapters, 8, mode).linear(name, x, layer.weight, layer.bias)
            want = lora.begin(np.array(ids, dtype=np.int32)[:, None], torch.float32, training=False).linear(
                name, x, layer.weight, layer.bias)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sampling_is_seeded_and_batch_independent(model):
    prompts = _prompts(5, seed=7)
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, seed=3)
    a = generate(model, prompts, config=cfg)
    b = generate(model, prompts[::-1], config=cfg, keys=list(range(5))[::-1])
    for x, y in zip(a, b[::-1]):
        _same(x, y.tokens, y.logprobs)
    c = generate(model, prompts, config=GenerationConfig(max_new_tokens=10, temperature=1.0, seed=4))
    assert [x.tokens.tolist() for x in a] != [x.tokens.tolist() for x in c]
    greedy = generate(model, prompts, max_new_tokens=10)
    top1 = generate(model, prompts, config=GenerationConfig(max_new_tokens=10, temperature=0.7, top_k=1))
    assert [x.tokens.tolist() for x in greedy] == [x.tokens.tolist() for x in top1]


def test_gumbel_sampling_follows_the_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).repeat(20000, 1)
    keys = torch.arange(20000, dtype=torch.int64)
    choice, _ = choose_tokens(logits, keys, torch.zeros_like(keys), (1.0, 0), seed=0)
    freq = np.bincount(choice.numpy(), minlength=4) / 20000
    np.testing.assert_allclose(freq, torch.softmax(logits[0], -1).numpy(), atol=0.015)
    choice, _ = choose_tokens(logits, keys, torch.zeros_like(keys), (1.0, 2), seed=0)
    assert set(choice.tolist()) == {1, 2}


def test_bad_inputs_name_the_prompt(model):
    with pytest.raises(ValueError, match="prompt 1: token id 99 at position 2"):
        generate(model, [np.array([14, 1, 12]), np.array([14, 1, 99, 12])])
    with pytest.raises(ValueError, match="prompt 0: must be a non-empty"):
        generate(model, [np.array([], dtype=np.int32)])
    with pytest.raises(ValueError, match="prompt 1: adapter id 0 is invalid .no LoRA was given"):
        generate(model, _prompts(2), [-1, 0])
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        GenerationConfig(max_new_tokens=0)
    assert generate(model, []) == []


def _task(tid: str, seed: int) -> Task:
    rng = np.random.default_rng(seed)

    def g(h, w):
        return rng.integers(0, 10, size=(h, w)).astype(np.uint8)

    train = [Pair(g(2, 3), g(3, 2)) for _ in range(2)]
    return Task(tid, train, [Pair(g(2, 2)), Pair(g(3, 2))], source="test")


def _turn_task(tid: str, seed: int) -> Task:
    """A task whose rule is the scripted generator's (a half turn: tests/scripted.py), so its
    solutions are what that generator answers. Non-square grids (a transpose changes the shape),
    none of them symmetric under a half turn (the answer differs from the input)."""
    rng = np.random.default_rng(seed)

    def g(h, w):
        while True:
            x = rng.integers(0, 10, size=(h, w)).astype(np.uint8)
            if not np.array_equal(turn(x), x):
                return x

    return Task(tid, [Pair(x, turn(x)) for x in (g(2, 3), g(3, 4))],
                [Pair(x, turn(x)) for x in (g(2, 3), g(4, 2))], source="test")


N_TTA = 16   # transform i % 8 for augmentation i: each dihedral transform twice, colours permuted after the first


def _checked_augmentations(task, n=N_TTA):
    """predict_task's augmentations, checked to exercise every inverse: all 8 dihedral transforms,
    and, after the first (the identity), each one moving every test output (so an inverse left
    out or taken the wrong way leaves another grid)."""
    from arcfast.arc.augment import test_time_augmentations

    augs = test_time_augmentations(task, n)
    assert {a.transform for a in augs} == set(range(8))
    assert augs[0].transform == 0 and augs[0].colors == tuple(range(10))
    assert sum(a.colors != tuple(range(10)) for a in augs) >= n - 2
    for q in task.test:
        assert all(not np.array_equal(augment_like(q.output, a), q.output) for a in augs[1:])
    return augs


def test_predict_task_decodes_and_inverts(eog_model):
    """Every prediction, under every augmentation, parses and is un-augmented to the known solution:
    the scripted generator answers each prompt with the solution in that prompt's frame."""
    from arcfast.infer.predict import augmentation_name

    task = _turn_task("t0", 0)
    augs = _checked_augmentations(task)
    gen = ScriptedGenerator(eog_model)
    preds = predict_task(eog_model, task, n_predictions=N_TTA, generator=gen)
    # The prompts were built under the augmentations, in order: each one's target input is the test
    # input in that frame (numpy's dihedral transforms and colour maps, not the core's).
    assert [x.tolist() for x, _ in gen.seen] == [augment_like(q.input, a).tolist() for q in task.test for a in augs]
    assert [a for _, a in gen.seen] == [-1] * len(gen.seen)
    assert len(preds) == len(task.test)
    for q, plist in zip(task.test, preds):
        assert len(plist) == N_TTA
        for i, (p, a) in enumerate(zip(plist, augs)):
            framed = augment_like(q.output, a)   # what the generator emitted, as a grid
            assert p.augmentation == augmentation_name(i, a)
            assert p.status == "ok" and p.grid is not None, p.augmentation
            assert p.grid.shape == q.output.shape and np.array_equal(p.grid, q.output), p.augmentation
            assert p.n_tokens == T.grid_len(*framed.shape) and p.adapter == "base"
            assert p.logprob == pytest.approx(TOKEN_LOGPROB * p.n_tokens)
        (top,) = vote(plist, top_k=None)
        assert top.count == N_TTA and np.array_equal(top.grid, q.output)


def test_predict_task_votes_the_known_answer_over_wrong_and_unparsed_ones(eog_model):
    """Three kinds of scripted answer, by the target input's top-left cell in the prompt's frame: the
    solution, the input copied (wrong, but the same grid from every frame) and the solution cut
    before its EOG. Each prediction is what its kind says, and voting counts them exactly."""
    task = _turn_task("t1", 14)
    augs = _checked_augmentations(task)

    def kind(x):
        return int(x[0, 0]) % 3   # 0: right, 1: wrong, 2: cut short

    def rule(x):
        return (turn(x), x, encode(turn(x))[:-1])[kind(x)]

    preds = predict_task(eog_model, task, n_predictions=N_TTA, generator=ScriptedGenerator(eog_model, rule=rule))
    for q, plist in zip(task.test, preds):
        kinds = [kind(augment_like(q.input, a)) for a in augs]
        n = [kinds.count(k) for k in range(3)]
        assert n[0] > n[1] >= 1 and n[2] >= 1, n   # the task tells each kind apart
        for p, k, a in zip(plist, kinds, augs):
            framed = augment_like(q.output, a)
            if k == 2:
                assert p.grid is None and p.status == "unterminated" and p.n_tokens == T.grid_len(*framed.shape) - 1
            else:
                assert p.status == "ok" and np.array_equal(p.grid, q.output if k == 0 else q.input), p.augmentation
        cands = vote(plist, top_k=None)
        assert [c.grid.tolist() for c in cands] == [q.output.tolist(), q.input.tolist()]
        assert [c.count for c in cands] == n[:2]
        assert [c.members for c in cands] == [tuple(i for i, k in enumerate(kinds) if k == j) for j in (0, 1)]


def test_predict_tasks_batches_tasks_with_their_adapters(eog_model):
    lora = _lora(eog_model, n=2, seed=8)
    tasks = [_task("a", 1), _task("b", 2), _task("c", 3)]
    adapters = [0, 1, -1]
    cfg = GenerationConfig(max_new_tokens=20)
    together = predict_tasks(eog_model, tasks, adapters, lora, n_predictions=4, config=cfg)
    for t, a, got in zip(tasks, adapters, together):
        alone = predict_task(eog_model, t, a, lora, n_predictions=4, config=cfg)
        for x, y in zip(got, alone):
            assert [p.n_tokens for p in x] == [p.n_tokens for p in y]
            # Few of these outputs parse: the log-probabilities tell whose adapter each one ran with.
            assert [p.logprob for p in x] == pytest.approx([p.logprob for p in y], abs=1e-4)
            assert [p.status for p in x] == [p.status for p in y]
            assert all(p.adapter == (str(a) if a >= 0 else "base") for p in x)
            assert all(p.search == "greedy" for p in x)
            for p, q in zip(x, y):
                assert (p.grid is None and q.grid is None) or np.array_equal(p.grid, q.grid)


def test_predictions_say_how_they_were_found(eog_model):
    from arcfast.infer.search import SearchConfig

    task = _task("s", 4)
    sampled = predict_task(eog_model, task, n_predictions=3,
                           config=GenerationConfig(max_new_tokens=12, temperature=1.0))
    searched = predict_task(eog_model, task, n_predictions=2, search=SearchConfig(min_prob=0.2, max_new_tokens=12))
    assert {p.search for ps in sampled for p in ps} == {"sample"}
    assert {p.search for ps in searched for p in ps} == {"dfs"}


def test_predict_tasks_bad_task_skipped_or_named(model):
    good = _task("good", 4)
    big = np.zeros((30, 30), dtype=np.uint8)
    bad = Task("bad", good.train, [Pair(big)], source="bad.json")  # its prompt cannot fit 200 tokens
    errors = {}
    cfg = GenerationConfig(max_new_tokens=2)
    out = predict_tasks(model, [good, bad], n_predictions=2, config=cfg, max_prompt_len=200,
                        on_error="skip", errors=errors)
    assert list(errors) == ["bad"] and "bad.json" in errors["bad"] and "test input 0" in errors["bad"]
    assert out[1] == [[]]
    assert [len(p) for p in out[0]] == [2, 2]
    # Two tokens hold no grid (the smallest takes three): every prediction is unanswered, none raises.
    statuses = {s.value for s in DecodeStatus} - {"ok"}
    assert all(p.grid is None and p.status in statuses and 1 <= p.n_tokens <= 2 for ps in out[0] for p in ps)
    with pytest.raises(ValueError, match="task bad .bad.json., test input 0"):
        predict_tasks(model, [good, bad], n_predictions=2, config=cfg, max_prompt_len=200)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("lora_mode", ["gather", "grouped"])
def test_cuda_graphs_equal_eager(lora_mode):
    from arcfast.lora.routing import grouped_available

    torch.manual_seed(0)
    m = build_model(preset("tiny"), device="cuda", dtype=torch.bfloat16)
    init_weights(m, seed=1, std=0.3)
    with torch.no_grad():
        m.model.embed_tokens.weight[T.EOG] *= 2.5
    if lora_mode == "grouped" and not grouped_available(m.device, m.dtype):
        pytest.skip("torch._grouped_mm needs bf16 on sm90+")
    lora = MultiLoRA(m, LoRAConfig(r=8, alpha=16.0), n_adapters=3)
    with torch.no_grad():
        lora.weight.copy_(torch.randn(lora.weight.shape, generator=torch.Generator().manual_seed(0)).cuda() * 0.3)
    prompts = _prompts(40, seed=9)
    adapters = [(i % 4) - 1 for i in range(40)]
    for cfg in (GenerationConfig(max_new_tokens=40), GenerationConfig(max_new_tokens=40, temperature=1.0, top_k=5)):
        # max_batch 24 < 40 prompts: refills, compactions and several batch buckets, all captured.
        eager = Generator(m, lora=lora, cuda_graphs=False, lora_mode=lora_mode, max_batch=24)
        graphs = Generator(m, lora=lora, cuda_graphs=True, lora_mode=lora_mode, max_batch=24)
        a = eager.generate(prompts, adapters, cfg)
        b = graphs.generate(prompts, adapters, cfg)
        assert graphs.stats.graphs_captured >= 2 and graphs.stats.compactions >= 2
        assert lora_mode in graphs.stats.lora_modes
        for x, y in zip(a, b):
            assert x.tokens.tolist() == y.tokens.tolist()
            np.testing.assert_array_equal(x.logprobs, y.logprobs)
        assert any(x.finished for x in a)
    # Against the model's own full forward (bf16 rounding differs: most greedy outputs agree exactly).
    outs = Generator(m, lora=lora, lora_mode=lora_mode).generate(prompts[:12], adapters[:12], max_new_tokens=12)
    same = [o.tokens.tolist() == greedy_reference(m, p, lora, a, max_new_tokens=12)[0].tolist()
            for o, p, a in zip(outs, prompts, adapters)]
    assert sum(same) >= 10, same


def test_compaction_moves_rows_with_their_state(model):
    gen = Generator(model, max_batch=4)
    gen._ensure(256, 8)
    with torch.inference_mode():
        for r in range(4):
            gen.kv[:, :, r] = float(r)
            gen.pos[r] = 10 * r + 3
            gen.ngen[r] = r + 1
            gen.out_tok[r, :r + 1] = 100 + r
        done_h = np.array([True, False, True, False])
        pos_h = np.array([3, 13, 23, 33])
        row_req = np.array([7, 5, 6, 4])
        results = [None] * 8
        n = gen._harvest_and_compact(4, done_h, pos_h, row_req, results)
    assert n == 2 and row_req[:2].tolist() == [5, 4] and pos_h[:2].tolist() == [13, 33]
    assert gen.pos[:2].tolist() == [13, 33] and gen.ngen[:2].tolist() == [2, 4]
    assert (gen.kv[:, :, 0, :, :13] == 1).all() and (gen.kv[:, :, 1, :, :33] == 3).all()
    assert gen.out_tok[1, :4].tolist() == [103] * 4
    assert results[7].tokens.tolist() == [100] and results[6].tokens.tolist() == [102] * 3
    assert [r is None for r in results] == [True] * 6 + [False] * 2


def test_deadline_stops_generation_and_keeps_every_output():
    """A passed deadline ends the call at once: rows stop where they are, unstarted prompts are empty."""
    import time as _time

    from arcfast.infer.generate import Generator
    from arcfast.model.decoder import build_model
    from arcfast.model.config import preset

    torch.manual_seed(0)
    model = build_model(preset("tiny"), dtype=torch.float32, device="cpu")
    prompts = [np.array([14, 11, 1, 2, 10, 13, 12], np.int32)] * 3
    gen = Generator(model, cuda_graphs=False)
    t0 = _time.monotonic()
    outs = gen.generate(prompts, max_new_tokens=500, stop_on_eog=False, deadline=_time.monotonic() - 1)
    assert _time.monotonic() - t0 < 5
    assert len(outs) == 3 and all(o is not None and o.n_tokens < 500 for o in outs)
    assert gen.stats.cut_by_deadline == 3
    full = gen.generate(prompts, max_new_tokens=5, stop_on_eog=False)
    assert [o.n_tokens for o in full] == [5, 5, 5] and gen.stats.cut_by_deadline == 0


def test_max_output_tokens_covers_fixed_and_scaled_outputs():
    from arcfast.infer.predict import max_output_tokens
    from arcfast.arc.task import Pair, Task
    from arcfast.arc.vocab import grid_len

    z = lambda h, w: np.zeros((h, w), np.uint8)
    scaled = Task("up", [Pair(z(2, 3), z(6, 9))], [Pair(z(4, 2))])          # x3: test gives 12 x 6
    assert max_output_tokens(scaled) == grid_len(12, 12)
    fixed = Task("fix", [Pair(z(10, 10), z(1, 1))], [Pair(z(5, 7))])        # 1x1 outputs, test input 5x7
    assert max_output_tokens(fixed) == grid_len(7, 7)
    big = Task("big", [Pair(z(10, 10), z(30, 30))], [Pair(z(20, 20))])      # capped at 30
    assert max_output_tokens(big) == grid_len(30, 30)


def test_merged_single_adapter_equals_low_rank_path(model):
    """One adapter for the whole batch decodes with it merged into the weights: the same greedy
    tokens and log-probabilities as the low-rank path, refreshed when the adapter changes."""
    lora = _lora(model, n=2, seed=4)
    prompts = _prompts(5, seed=12)
    merged = Generator(model, lora=lora)
    plain = Generator(model, lora=lora, merge_single=False)
    for a in (1, 0, 1):
        got, want = merged.generate(prompts, [a] * 5, max_new_tokens=9), plain.generate(prompts, [a] * 5, max_new_tokens=9)
        for x, y in zip(got, want):
            _same(x, y.tokens, y.logprobs)
    assert merged.stats.lora_modes == {"merged": 1} and plain.stats.lora_modes == {"single": 1}
    with torch.no_grad():   # new weights in the same slot: the next call must not reuse the merge
        lora.weight[1].mul_(-1.0)
    got, want = merged.generate(prompts, [1] * 5, max_new_tokens=9), plain.generate(prompts, [1] * 5, max_new_tokens=9)
    for p, x, y in zip(prompts, got, want):
        _same(x, y.tokens, y.logprobs)
        _same(x, *greedy_reference(model, p, lora, 1, max_new_tokens=9))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_merged_equal_eager():
    m = build_model(preset("tiny"), device="cuda", dtype=torch.bfloat16)
    init_weights(m, seed=1, std=0.3)
    lora = MultiLoRA(m, LoRAConfig(r=8, alpha=16.0), n_adapters=2)
    with torch.no_grad():
        lora.weight.copy_(torch.randn(lora.weight.shape, generator=torch.Generator().manual_seed(0)).cuda() * 0.3)
    prompts = _prompts(30, seed=10)
    eager = Generator(m, lora=lora, cuda_graphs=False, max_batch=16)
    graphs = Generator(m, lora=lora, cuda_graphs=True, max_batch=16)
    for a in (1, 0):   # the second adapter replays the graph captured with the first one's merge
        x, y = eager.generate(prompts, [a] * 30, max_new_tokens=30), graphs.generate(prompts, [a] * 30, max_new_tokens=30)
        assert graphs.stats.lora_modes == {"merged": graphs.stats.lora_modes["merged"]}
        for u, v in zip(x, y):
            assert u.tokens.tolist() == v.tokens.tolist()
            np.testing.assert_array_equal(u.logprobs, v.logprobs)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_fused_merged_step_other_families(family):
    """q/k norms (Qwen3) and bias-free projections (Llama) through the fused merged step, with a
    LoRA on some projections only."""
    m, lora = _family_model(family, qkv_bias=False, n_adapters=1)
    prompts = _prompts(4, seed=13)
    for a in (0, -1):
        got = Generator(m, lora=lora).generate(prompts, [a] * 4, max_new_tokens=8)
        for p, x in zip(prompts, got):
            _same(x, *greedy_reference(m, p, lora if a >= 0 else None, a, max_new_tokens=8))


def test_base_prompts_beside_one_adapter_get_no_delta(model):
    """A prefill micro-batch holding base-model prompts (-1) and prompts of exactly one adapter:
    the base prompts must not go through that adapter (its -1 tokens are real, not padding)."""
    lora = _lora(model, n=2, seed=8)
    prompts = _prompts(4, seed=14)
    adapters = [-1, 0, -1, 0]
    for merge in (True, False):
        mixed = Generator(model, lora=lora, merge_single=merge).generate(prompts, adapters, max_new_tokens=6)
        for p, a, o in zip(prompts, adapters, mixed):
            _same(o, *greedy_reference(model, p, lora if a >= 0 else None, a, max_new_tokens=6))


# ----------------------------------------------------------------------------------------------
# The fused multi-adapter step (q/k/v and gate/up fused, one LoRA delta per fused projection)

def _fused_vs_unfused(model, lora, prompts, adapters, lora_mode, max_new=10, **kw):
    """Generate with the fused and the per-projection multi-adapter steps; check they agree."""
    fused = Generator(model, lora=lora, lora_mode=lora_mode, **kw)
    plain = Generator(model, lora=lora, lora_mode=lora_mode, fuse_lora=False, **kw)
    got = fused.generate(prompts, adapters, max_new_tokens=max_new)
    want = plain.generate(prompts, adapters, max_new_tokens=max_new)
    assert lora_mode in fused.stats.lora_modes and lora_mode in plain.stats.lora_modes
    # The fused step ran on its own buffers: the per-projection copy of the adapters was never made.
    assert fused.adapters.fused_a and fused.adapters._flat is None and not plain.adapters.fused_a
    for x, y in zip(got, want):
        _same(x, y.tokens, y.logprobs)
    return fused, got


@pytest.mark.parametrize("lora_mode", ["gather", "grouped"])
def test_fused_mixed_adapters_equal_unfused_and_full_forward(model, lora_mode):
    """Mixed adapters and base rows, max_batch 4 < 9 prompts (refills, compactions, buckets):
    the fused step decodes what the per-projection step and the full forward decode. torch's
    ``_grouped_mm`` runs on the CPU too, so the grouped path is held here as well."""
    lora = _lora(model, n=3, seed=21)
    prompts = _prompts(9, seed=21)
    adapters = [-1, 0, 1, 2, 0, 1, 2, -1, 0]
    gen, got = _fused_vs_unfused(model, lora, prompts, adapters, lora_mode, max_batch=4)
    assert gen.stats.compactions >= 3
    for p, a, o in zip(prompts, adapters, got):
        _same(o, *greedy_reference(model, p, lora if a >= 0 else None, a, max_new_tokens=10))


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_fused_mixed_step_partial_targets_and_families(family):
    """A LoRA on q, v and up only (zero blocks for k, o, gate and down), with a q/k/v bias
    (Qwen2), q/k norms (Qwen3) or neither (Llama)."""
    m, lora = _family_model(family, qkv_bias=family == "qwen2", n_adapters=2)
    prompts = _prompts(5, seed=22)
    adapters = [0, 1, -1, 1, 0]
    want = [greedy_reference(m, p, lora if a >= 0 else None, a, max_new_tokens=8) for p, a in zip(prompts, adapters)]
    for mode in ("gather", "grouped"):
        _, got = _fused_vs_unfused(m, lora, prompts, adapters, mode, max_new=8, max_batch=3)
        for o, w in zip(got, want):
            _same(o, *w)


def test_fused_step_reads_the_weights_of_each_call():
    """One Generator, two calls: adapters (and the model) changed in between are decoded as they
    are now, not as the first call filled the fused buffers."""
    m = _model(seed=3)
    lora = _lora(m, n=2, seed=23)
    prompts = _prompts(4, seed=23)
    adapters = [0, 1, -1, 0]
    gen = Generator(m, lora=lora)
    first = gen.generate(prompts, adapters, max_new_tokens=8)
    with torch.no_grad():
        lora.weight[0].mul_(-1.0)
        lora.weight[1].normal_(0.0, 0.3, generator=torch.Generator().manual_seed(24))
    second = gen.generate(prompts, adapters, max_new_tokens=8)
    assert [o.tokens.tolist() for o in first[:2]] != [o.tokens.tolist() for o in second[:2]]
    for p, a, o in zip(prompts, adapters, second):
        _same(o, *greedy_reference(m, p, lora if a >= 0 else None, a, max_new_tokens=8))
    with torch.no_grad():
        m.model.layers[1].self_attn.k_proj.weight.mul_(1.5)
        m.model.layers[0].mlp.up_proj.weight.mul_(-1.0)
    third = gen.generate(prompts, adapters, max_new_tokens=8)
    assert third[2].tokens.tolist() != second[2].tokens.tolist()   # the base row saw the new model
    for p, a, o in zip(prompts, adapters, third):
        _same(o, *greedy_reference(m, p, lora if a >= 0 else None, a, max_new_tokens=8))
    assert gen.stats.lora_modes.get("gather", 0) >= 1


def _ops_per_step(gen: Generator, call) -> float:
    """Aten ops (views not counted) that one decode step calls, by torch.profiler over ``call()``."""
    from torch.profiler import profile, record_function

    step = gen._step

    def marked(*a, **kw):
        with record_function("decode_step"):
            return step(*a, **kw)

    def top(e):   # the ops the step calls itself, not what they call in turn
        for c in e.cpu_children:
            if c.name.startswith("aten::"):
                yield c
            else:
                yield from top(c)

    def is_view(name: str) -> bool:
        packet = getattr(torch.ops.aten, name.split("::")[1], None)
        return packet is not None and any(getattr(packet, o).is_view for o in packet.overloads())

    gen._step = marked
    try:
        with profile() as prof:
            call()
    finally:
        del gen._step
    roots = [e for e in prof.events() if e.name == "decode_step"]
    assert roots
    return sum(not is_view(e.name) for r in roots for e in top(r)) / len(roots)


@pytest.mark.parametrize("lora_mode", ["gather", "grouped"])
def test_fused_step_calls_fewer_ops(model, lora_mode):
    """The point of the fused step: per layer, 4 fused projections of 5 ops each (the GEMM, two
    LoRA matmuls, two gathers or the sort and its index_add_) instead of 7 projections of 7 (the
    GEMM, two LoRA matmuls, two gathers or sort and unsort, scale, add; grouped: and an empty_like)."""
    lora = _lora(model, n=3, seed=26)
    prompts = _prompts(6, seed=26)
    per_step = {}
    for fuse in (True, False):
        gen = Generator(model, lora=lora, lora_mode=lora_mode, fuse_lora=fuse)
        per_step[fuse] = _ops_per_step(gen, lambda: gen.generate(prompts, [0, 1, 2, -1, 0, 1], max_new_tokens=3,
                                                                   stop_on_eog=False))
        assert gen.stats.lora_modes == {lora_mode: 1}
    assert per_step[False] - per_step[True] >= (7 * 7 - 4 * 5) * model.config.n_layers


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fused_grouped_equals_gather_and_unfused(monkeypatch):
    """bf16 on CUDA: the logits of one decode step (all rows, adapters and base rows mixed) of the
    fused steps (grouped where sm90+, Triton segments, gather) against the per-projection gather
    step. The prefill is the same code for all, so the step's inputs are too."""
    import arcfast.infer.generate as G
    from arcfast.lora.routing import grouped_available

    m = build_model(preset("tiny"), device="cuda", dtype=torch.bfloat16)
    init_weights(m, seed=1, std=0.3)
    grouped = grouped_available(m.device, m.dtype)   # torch._grouped_mm: bf16 on sm90+
    lora = MultiLoRA(m, LoRAConfig(r=8, alpha=16.0), n_adapters=3)
    with torch.no_grad():
        lora.weight.copy_(torch.randn(lora.weight.shape, generator=torch.Generator().manual_seed(0)).cuda() * 0.3)
    prompts = _prompts(20, seed=27)
    adapters = [(i % 4) - 1 for i in range(20)]
    seen = []
    choose = G.choose_tokens

    def spy(logits, *a, **kw):
        seen.append(logits.float().clone())
        return choose(logits, *a, **kw)

    monkeypatch.setattr(G, "choose_tokens", spy)
    logits = {}
    runs = {"gather, unfused": dict(lora_mode="gather", fuse_lora=False), "gather": dict(lora_mode="gather"),
            "segments": dict(lora_mode="segments"), "base": None}
    if grouped:
        runs.update({"grouped": dict(lora_mode="grouped"), "grouped, unfused": dict(lora_mode="grouped", fuse_lora=False)})
    for name, kw in runs.items():
        seen.clear()
        # sync_every=1 and two new tokens: the prefill's choice, then exactly one decode step.
        if kw is None:
            gen = Generator(m, cuda_graphs=False, sync_every=1)
            gen.generate(prompts, max_new_tokens=2, stop_on_eog=False)
        else:
            gen = Generator(m, lora=lora, cuda_graphs=False, sync_every=1, **kw)
            gen.generate(prompts, adapters, max_new_tokens=2, stop_on_eog=False)
            assert gen.stats.lora_modes == {kw["lora_mode"]: 1} and gen.stats.decode_steps == 1
        logits[name] = seen[-1][:len(prompts)]
    # bf16 paths round differently (gather's baddbmm adds the delta before rounding it, the others
    # after: 0.19 at most, 0.02 on average, on logits of mean size 2 with a CPU bf16 run of this test),
    # so the bar is set against what the adapters change: a lost or misplaced delta moves the
    # logits by about that much.
    want = logits["gather, unfused"]
    effect = (want - logits["base"]).abs()
    assert effect.mean() > 0.5
    for name in [n for n in runs if n not in ("gather, unfused", "base")]:
        err = (logits[name] - want).abs()
        assert err.mean() < 0.1 * effect.mean() and err.max() < 0.25 * effect.max(), (name, err.mean(), err.max())


def test_decode_with_the_triton_ops_equals_plain_torch(monkeypatch):
    """The decode step with the fused kernels (norm, fused residual add + norm, RoPE, SwiGLU), run
    by Triton's interpreter, against the same step in plain torch."""
    import copy

    from arcfast.kernels._testing import enable_kernels

    enable_kernels(monkeypatch)
    plain = _model(seed=3)
    fused = copy.deepcopy(plain).set_ops("triton")
    lora = _lora(plain, n=2, seed=5)
    prompts = _prompts(3, seed=15, hi=12)
    for ids in ([0, 0, 0], [0, 1, -1]):
        want = Generator(plain, lora=lora).generate(prompts, ids, max_new_tokens=5)
        got = Generator(fused, lora=lora).generate(prompts, ids, max_new_tokens=5)
        for x, y in zip(got, want):
            _same(x, y.tokens, y.logprobs)


@pytest.mark.parametrize("kernels", [False, True], ids=["reference", "interpreted"])
def test_segments_mode_equals_gather(model, kernels, monkeypatch):
    """Mixed adapters through the Triton LoRA kernels (lora_mode="segments", the default on GPUs
    without grouped GEMMs): the same tokens as the fused gather path; with ``kernels`` the Triton
    kernels themselves run, in the interpreter."""
    if kernels:
        from arcfast.kernels._testing import enable_kernels

        enable_kernels(monkeypatch)
    lora = _lora(model, n=3, seed=9)
    prompts = _prompts(5, seed=16, hi=14)
    adapters = [0, 2, -1, 1, 2]
    seg = Generator(model, lora=lora, lora_mode="segments", max_batch=4)
    got = seg.generate(prompts, adapters, max_new_tokens=4)
    want = Generator(model, lora=lora, lora_mode="gather", max_batch=4).generate(prompts, adapters, max_new_tokens=4)
    assert "segments" in seg.stats.lora_modes
    for x, y in zip(got, want):
        _same(x, y.tokens, y.logprobs)
    with pytest.raises(ValueError, match="fuse_lora=True"):
        Generator(model, lora=lora, lora_mode="segments", fuse_lora=False)


def test_weight_copies_that_do_not_fit_switch_their_path_off(model, monkeypatch):
    """On a GPU with little memory left, merged and fused decoding (which copy the projections) give
    way to the model's own layers, and the outputs stay the same."""
    lora = _lora(model, n=3, seed=10)
    prompts = _prompts(4, seed=17)
    want = {ids: Generator(model, lora=lora).generate(prompts, list(ids), max_new_tokens=5)
            for ids in ((1, 1, 1, 1), (0, 2, -1, 1))}
    gen = Generator(model, lora=lora)
    ad = gen.adapters
    ad.cuda = True   # only _check_room reads it here
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 ** 12, 2 * 10 ** 12))
    ad._check_room(mixed=False)
    ad._check_room(mixed=True)
    assert ad.merge_single and ad.fuse_lora   # plenty of room
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 10 ** 9))
    ad._check_room(mixed=False)
    ad._check_room(mixed=True)
    assert not ad.merge_single and not ad.fuse_lora
    ad.cuda = False
    for ids, outs in want.items():
        for x, y in zip(gen.generate(prompts, list(ids), max_new_tokens=5), outs):
            _same(x, y.tokens, y.logprobs)
    assert set(gen.stats.lora_modes) <= {"single", "gather"}
