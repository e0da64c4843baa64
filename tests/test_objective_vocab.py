"""The objectives' ids (CANDIDATE, VERDICT, YES, NO = 16-19): models cut with them, models saved
without them still loading, and grow_vocab giving a 16-id model their rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from arcfast import tokens as T
from arcfast.model import (ModelConfig, build_model, compact_token_ids, compact_tokenizer, grow_vocab, load_model,
                           preset, save_model)

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
