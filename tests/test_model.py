"""The decoder against transformers, the vocabulary cut, and packed attention against one-by-one."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from arcfast.arc import vocab as T
from arcfast.model.attention import PackedAttention, causal_attention, packed_mask
from arcfast.model.config import PRESETS, ModelConfig, preset
from arcfast.model.decoder import build_model
from arcfast.model.checkpoint import compact_token_ids, load_model, save_model
from arcfast.model.hf import from_hf, hf_config, to_hf

pytestmark = pytest.mark.usefixtures("one_thread")


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
ARCHS = {
    "qwen2": dict(family="qwen2", qkv_bias=True, tie_embeddings=True),
    "qwen3": dict(family="qwen3", qk_norm=True, head_dim=24, tie_embeddings=False),
    "llama": dict(family="llama", tie_embeddings=False, rope_scaling=LLAMA3, rms_eps=1e-5),
    "mistral": dict(family="mistral", head_dim=8, tie_embeddings=False, rope_theta=1e6),
}


def small_cfg(arch: str, vocab: int = 40) -> ModelConfig:
    base = dict(vocab_size=vocab, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=48,
                rope_theta=1e4)
    return ModelConfig(**{**base, **ARCHS[arch]})


def randomize_norms(model, seed=0):
    # transformers inits norms to one and biases to zero: make them matter in the comparison.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g) if "norm" in name
                        else 0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_logits_match_transformers(arch):
    model = randomize_norms(build_model(small_cfg(arch), seed=3))
    hf = to_hf(model, attn_implementation="eager").eval()
    ids = torch.randint(0, 40, (2, 37), generator=torch.Generator().manual_seed(1))
    ours = model.logits(model(ids))
    theirs = hf(ids).logits
    assert ours.shape == theirs.shape == (2, 37, 40)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # and back: transformers -> ours
    again = from_hf(hf)
    torch.testing.assert_close(again.logits(again(ids)), theirs, rtol=1e-5, atol=1e-5)


def test_rope_scaling_changes_logits():
    """The llama3 frequencies matter at these positions (so the match above tests them)."""
    cfg = small_cfg("llama")
    m1 = build_model(cfg, seed=3)
    m2 = build_model(replace(cfg, rope_scaling=None), seed=3)
    ids = torch.randint(0, 40, (1, 40), generator=torch.Generator().manual_seed(1))
    assert (m1.logits(m1(ids)) - m2.logits(m2(ids))).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_match_transformers_architecture(name):
    """Every preset has the parameter names and shapes of the transformers model of its family."""
    cfg = preset(name, vocab="full")
    with torch.device("meta"):
        from arcfast.model.decoder import CausalLM
        import transformers

        ours = CausalLM(cfg)
        hf = transformers.AutoModelForCausalLM.from_config(hf_config(cfg))
    ours_sd = {k: tuple(v.shape) for k, v in ours.hf_state_dict().items()}
    hf_sd = {k: tuple(v.shape) for k, v in hf.state_dict().items() if not k.endswith("inv_freq")}
    assert ours_sd == hf_sd
    n = sum(p.numel() for p in ours.parameters())
    assert n == cfg.n_params()


def test_qwen25_05b_size():
    # Published size of Qwen2.5-0.5B: 494,032,768 parameters (tied embeddings, 151,936 tokens).
    assert preset("qwen2.5-0.5b", vocab="full").n_params() == 494_032_768
    assert preset("qwen2.5-0.5b").vocab_size == T.VOCAB_SIZE


def test_default_dtype_and_unknown_preset():
    assert load_model("tiny").dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="preset"):
        load_model("no-such-model")


# ----------------------------------------------------------------------------------------------
# Checkpoints and the vocabulary cut

def make_tokenizer(extra_symbols: int = 24, multi_token: str | None = None, seed: int = 0):
    """A character-level tokenizer whose vocabulary holds the compact symbols at shuffled ids among
    other characters; ``multi_token`` makes that symbol encode as two tokens."""
    from tokenizers import Tokenizer, models, normalizers
    from transformers import PreTrainedTokenizerFast

    chars = list(T.SYMBOLS) + [chr(ord("a") + i) for i in range(extra_symbols)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(chars))
    vocab = {chars[j]: i for i, j in enumerate(order)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    if multi_token is not None:
        tok.normalizer = normalizers.Replace(multi_token, "ab")
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def write_checkpoint(tmp_path, arch="qwen2", multi_token=None):
    tokenizer = make_tokenizer(multi_token=multi_token)
    vocab = len(tokenizer)
    model = randomize_norms(build_model(small_cfg(arch, vocab=vocab), seed=5))
    hf = to_hf(model)
    d = tmp_path / f"ckpt-{arch}"
    hf.save_pretrained(str(d))
    tokenizer.save_pretrained(str(d))
    return d, hf.eval(), tokenizer


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_vocab_cut_keeps_the_symbol_rows(tmp_path, arch):
    d, hf, tok = write_checkpoint(tmp_path, arch)
    model = load_model(str(d))
    assert model.config.vocab_size == T.VOCAB_SIZE and model.config.token_ids is None
    ids_map = [tok.encode(s, add_special_tokens=False)[0] for s in T.SYMBOLS]
    assert list(model.config.source_token_ids) == ids_map
    assert ids_map != list(range(T.VOCAB_SIZE))  # the cut really reorders rows
    compact = torch.randint(0, T.VOCAB_SIZE, (2, 30), generator=torch.Generator().manual_seed(2))
    full_ids = torch.tensor(ids_map)[compact]
    ours = model.logits(model(compact))
    theirs = hf(full_ids).logits[..., ids_map]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)

    full = load_model(str(d), vocab="full")
    assert full.config.vocab_size == len(tok) and list(full.config.token_ids) == ids_map
    torch.testing.assert_close(full.logits(full(full_ids)), hf(full_ids).logits, rtol=1e-5, atol=1e-5)


def test_vocab_cut_refuses_a_multi_token_symbol(tmp_path):
    d, _, _ = write_checkpoint(tmp_path, multi_token="E")
    with pytest.raises(ValueError, match=r"'E' \(id 13, EOG\) is 2 tokens"):
        load_model(str(d))


def test_vocab_cut_refuses_an_unknown_symbol(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(T.SYMBOLS) if s != "\n"}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[])))
    with pytest.raises(ValueError, match=r"'\\n' \(id 10, ROW\) is 0 tokens"):
        compact_token_ids(tmp_path, tok)


def test_save_and_load_compact_model(tmp_path):
    model = randomize_norms(load_model("tiny", seed=4))
    d = save_model(model, tmp_path / "m")
    assert json.loads((d / "config.json").read_text())["vocab_size"] == T.VOCAB_SIZE
    again = load_model(str(d))
    ids = torch.randint(0, T.VOCAB_SIZE, (1, 20))
    torch.testing.assert_close(again.logits(again(ids)), model.logits(model(ids)))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_model_files_have_the_umask_mode_and_no_progress_bar(tmp_path, umask, capfd):
    import os
    import stat

    old = os.umask(umask)
    try:
        d = save_model(load_model("tiny"), tmp_path / "m")
    finally:
        os.umask(old)
    files = [f for f in d.iterdir() if f.is_file()]
    assert any(f.suffix == ".safetensors" for f in files)
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o666 & ~umask for f in files}
    assert "Writing model shards" not in capfd.readouterr().err


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        load_model(str(tmp_path))


# ----------------------------------------------------------------------------------------------
# Packed attention

def packed_rows(lengths_per_row, L, seed=0):
    """sample_ids [R, L] for rows holding samples of the given lengths, then padding."""
    sid = np.full((len(lengths_per_row), L), -1, np.int32)
    k = 0
    for r, lens in enumerate(lengths_per_row):
        pos = 0
        for n in lens:
            sid[r, pos:pos + n] = k
            k += 1
            pos += n
    return sid


def test_packed_mask_semantics():
    sid = torch.tensor([[0, 0, 1, 1, 1, -1, -1]])
    m = packed_mask(sid)[0, 0]
    assert m[1, 0] and not m[0, 1]                  # causal within sample 0
    assert not m[2, 1] and m[4, 2]                  # never across samples
    assert m[5, 5] and not m[5, 4] and not m[6, 5]  # padding: itself only


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def cu_seqlens_of(lens, L):
    cu = [0]
    for r, row in enumerate(lens):
        for n in row:
            cu.append(cu[-1] + n)
        if cu[-1] < (r + 1) * L:
            cu.append((r + 1) * L)
    return np.array(cu, np.int32)


@pytest.mark.parametrize("impl", ["sdpa", "flex", "loop"])
def test_packed_attention_equals_one_by_one(impl):
    g = torch.Generator().manual_seed(0)
    lens = [[5, 9, 3], [12], [4, 4, 4, 2], [16]]
    L, H, Hkv, D = 17, 4, 2, 8
    sid = torch.from_numpy(packed_rows(lens, L))
    q = torch.randn(len(lens), L, H, D, generator=g)
    k = torch.randn(len(lens), L, Hkv, D, generator=g)
    v = torch.randn(len(lens), L, Hkv, D, generator=g)
    out = PackedAttention(sid, impl, cu_seqlens=cu_seqlens_of(lens, L))(q, k, v)
    assert torch.isfinite(out).all()
    for r, row in enumerate(lens):
        pos = 0
        for n in row:
            sl = slice(pos, pos + n)
            alone = causal_attention(q[r:r + 1, sl], k[r:r + 1, sl], v[r:r + 1, sl])
            torch.testing.assert_close(out[r:r + 1, sl], alone, rtol=1e-5, atol=1e-5)
            pos += n


def test_loop_attention_refuses_a_segment_across_rows():
    sid = torch.zeros(2, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="crosses the end of row 0"):
        PackedAttention(sid, "loop", cu_seqlens=np.array([0, 6, 8], np.int32))


def test_sdpa_grouped_kv_heads_without_enable_gqa(monkeypatch):
    """torch < 2.5 has no enable_gqa: the kv heads are repeated instead, with the same result."""
    import arcfast.model.attention as A

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 7, 8, generator=g) for h in (6, 2, 2))
    want = A.sdpa(q, k, v, is_causal=True)
    monkeypatch.setattr(A, "_SDPA_GQA", False)
    got = A.sdpa(q, k, v, is_causal=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1),
                                                           is_causal=True)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(want, ref, rtol=1e-5, atol=1e-6)
