"""The objectives' ids (CANDIDATE, VERDICT, YES, NO = 16-19): models cut with them, models saved
without them still loading, and grow_vocab giving a 16-id model their rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from arcfast.arc import vocab as T
from arcfast.model.config import ModelConfig, preset
from arcfast.model.decoder import build_model, grow_vocab
from arcfast.model.checkpoint import compact_token_ids, load_model, save_model
from arcfast.model.hf import compact_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(tie: bool = True, seed: int = 3):
    cfg = ModelConfig(hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=48, tie_embeddings=tie,
                      qkv_bias=True)
    return build_model(cfg, dtype=torch.float32, device="cpu", seed=seed).eval()


@pytest.mark.parametrize("tie", [True, False])
def test_grow_vocab_adds_the_objective_rows_and_keeps_the_rest(tie):
    m = _tiny(tie)
    assert m.config.vocab_size == T.VOCAB_SIZE and not m.config.has_objective_ids
    ids = torch.randint(0, T.VOCAB_SIZE, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = m.logits(m(ids))
        emb = m.model.embed_tokens.weight.detach().clone()
    assert grow_vocab(m) is m
    assert m.config.vocab_size == T.OBJECTIVE_VOCAB and m.config.has_objective_ids
    w = m.model.embed_tokens.weight
    assert w.shape == (T.OBJECTIVE_VOCAB, 32) and torch.equal(w[:T.VOCAB_SIZE], emb)
    head = m.lm_head_weight()
    assert head.shape == (T.OBJECTIVE_VOCAB, 32)
    assert (head[T.YES] - head[T.NO]).abs().max() > 1e-3          # a verdict can be read at all
    with torch.no_grad():
        after = m.logits(m(ids))
        # The grid ids' logits are the model's own; the new ids can be read too.
        torch.testing.assert_close(after[..., :T.VOCAB_SIZE], before, rtol=0, atol=0)
        m.logits(m(torch.tensor([[T.BOS, T.CANDIDATE, 3, T.ROW, T.EOG, T.VERDICT, T.YES]])))
    # The same model grown again gets the same rows; growing twice changes nothing.
    again = grow_vocab(_tiny(tie))
    assert torch.equal(again.model.embed_tokens.weight, w) and torch.equal(again.lm_head_weight(), head)
    assert torch.equal(grow_vocab(m).model.embed_tokens.weight, w)


def test_grown_model_saves_and_loads_with_its_twenty_ids(tmp_path):
    m = grow_vocab(_tiny())
    save_model(m, tmp_path / "grown")
    tok = compact_tokenizer(T.OBJECTIVE_VOCAB)
    assert tok.convert_tokens_to_ids(["C", "?", "Y", "N"]) == [T.CANDIDATE, T.VERDICT, T.YES, T.NO]
    back = load_model(str(tmp_path / "grown"), device="cpu", dtype=torch.float32)
    assert back.config.vocab_size == T.OBJECTIVE_VOCAB
    x = torch.tensor([[T.BOS, T.INPUT, 1, 2, T.ROW, T.EOG, T.CANDIDATE, 1, T.ROW, T.EOG, T.VERDICT]])
    with torch.no_grad():
        torch.testing.assert_close(back.logits(back(x)), m.logits(m(x)))


def test_a_model_saved_with_sixteen_ids_still_loads(tmp_path):
    m = _tiny()
    save_model(m, tmp_path / "old")
    back = load_model(str(tmp_path / "old"), device="cpu", dtype=torch.float32)
    assert back.config.vocab_size == T.VOCAB_SIZE and not back.config.has_objective_ids
    assert compact_token_ids(tmp_path / "old") == list(range(T.VOCAB_SIZE))
    assert grow_vocab(back).config.vocab_size == T.OBJECTIVE_VOCAB


def test_a_tokenizer_without_the_objective_symbols_cuts_to_sixteen_ids(tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {s: i for i, s in enumerate(T.SYMBOLS)}
    vocab["<unk>"] = len(vocab)
    vocab["Y"] = len(vocab)     # one of the four is there, the others are the unknown token
    Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    assert compact_token_ids(tmp_path) == list(range(T.VOCAB_SIZE))
    vocab.update({"C": len(vocab), "?": len(vocab) + 1, "N": len(vocab) + 2})
    Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    assert compact_token_ids(tmp_path) == list(range(T.VOCAB_SIZE)) + [vocab[s] for s in T.OBJECTIVE_SYMBOLS]


def test_full_vocabulary_models_map_the_objective_ids():
    cfg = preset("tiny", vocab="full")
    assert cfg.token_ids == tuple(range(T.OBJECTIVE_VOCAB)) and cfg.has_objective_ids
    np.testing.assert_array_equal(cfg.model_ids(np.array([T.YES, T.NO, -100])), [T.YES, T.NO, -100])
    m = build_model(ModelConfig(hidden_size=32, n_layers=1, n_heads=4, n_kv_heads=2, intermediate_size=48,
                                vocab_size=300, token_ids=tuple(range(100, 116)), name="cut-elsewhere"),
                    dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="cut-elsewhere: a full-vocabulary model whose tokenizer gives no distinct"):
        grow_vocab(m)


@pytest.mark.parametrize("search", [False, True])
def test_a_grown_model_never_generates_the_objective_ids(tmp_path, search):
    """Generation and depth-first search choose among the grid ids only: a model grown for verify
    whose YES row would win every step still answers grids (the bigram model of test_cli: [[3]] in
    the prompt's frame), with log-probabilities under its whole vocabulary, as the scorer's."""
    from arcfast.arc.loading import load_tasks
    from arcfast.infer.predict import predict_tasks
    from arcfast.infer.search import SearchConfig
    from test_cli import _bigram_checkpoint

    model = grow_vocab(load_model(str(_bigram_checkpoint(tmp_path / "bigram")), dtype=torch.float32, device="cpu"))
    assert model.config.grid_columns().tolist() == list(range(T.VOCAB_SIZE))
    plain = load_model(str(tmp_path / "bigram"), dtype=torch.float32, device="cpu")
    assert plain.config.grid_columns() is None
    tasks = load_tasks("arc1:train[:1]")
    kw = dict(n_predictions=2, search=SearchConfig(min_prob=0.5, max_new_tokens=8) if search else None)
    with torch.no_grad():
        want = predict_tasks(plain.eval(), tasks, [-1], **kw)
        # YES a little below the grid token each step picks: a tie-break away, never chosen
        model.lm_head.weight[T.YES] = model.lm_head.weight[: T.VOCAB_SIZE].max(0).values * 0.999
        got = predict_tasks(model.eval(), tasks, [-1], **kw)
    flat = lambda preds: [p for per_task in preds for per_test in per_task for p in per_test]
    assert [str(p.status) for p in flat(got)] == [str(p.status) for p in flat(want)] and flat(got)
    assert all(p.grid is not None and np.array_equal(p.grid, q.grid) for p, q in zip(flat(got), flat(want)))
    # YES takes probability mass the 16-id model did not have: its outputs are less likely
    assert all(p.logprob < q.logprob for p, q in zip(flat(got), flat(want)))
