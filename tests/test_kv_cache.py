"""The model's one forward, run through the KV cache attentions, against the same forward over whole
rows; and the forward's variants (checkpointed, compiled blocks, fused add + norm) against the plain
one."""
from __future__ import annotations

import pytest
import torch

from arcfast.model.kv_cache import CacheDecode, CachePrefill, copy_rows
from arcfast.model.decoder import FusedAddNormStep, LayerStep, build_model
from arcfast.model.config import ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0, qk_norm=False):
    cfg = ModelConfig(vocab_size=16, hidden_size=32, n_layers=3, n_heads=4, n_kv_heads=2, intermediate_size=48,
                      qk_norm=qk_norm, qkv_bias=not qk_norm)
    m = build_model(cfg, dtype=torch.float32, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():   # norms away from one, so a norm applied twice or skipped shows
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    return m.eval()


def _cache(m, rows, S):
    c = m.config
    return torch.zeros(c.n_layers, 2, rows, c.n_kv_heads, S, c.head_dim)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_prefill_then_decode_equals_whole_rows(qk_norm):
    m = _model(qk_norm=qk_norm)
    g = torch.Generator().manual_seed(3)
    lens = [7, 4, 6]
    new = 5
    seqs = [torch.randint(0, 16, (n + new,), generator=g) for n in lens]
    S = 16
    kv = _cache(m, 4, S)
    L = max(lens)
    ids = torch.zeros(3, L, dtype=torch.long)
    for r, (s, n) in enumerate(zip(seqs, lens)):
        ids[r, :n] = s[:n]
    with torch.no_grad():
        h = m(ids, attention=CachePrefill(kv, 0), step=FusedAddNormStep())
        for r, (s, n) in enumerate(zip(seqs, lens)):
            whole = m(s[None])[0]
            torch.testing.assert_close(h[r, :n], whole[:n], atol=1e-5, rtol=1e-5)
        pos = torch.tensor(lens)
        rows, span = torch.arange(4), torch.arange(S)
        for t in range(new):
            tok = torch.stack([s[n + t] for s, n in zip(seqs, lens)])
            hd = m(tok[:, None], pos[:, None], CacheDecode(kv, pos, S, rows, span), step=FusedAddNormStep())
            for r, (s, n) in enumerate(zip(seqs, lens)):
                whole = m(s[None, :n + t + 1])[0, -1]
                torch.testing.assert_close(hd[r, 0], whole, atol=1e-5, rtol=1e-5)
            pos = pos + 1


def test_copied_row_decodes_as_its_source():
    m = _model(seed=1)
    g = torch.Generator().manual_seed(4)
    prompt = torch.randint(0, 16, (6,), generator=g)
    S = 8
    kv = _cache(m, 2, S)
    rows, span = torch.arange(2), torch.arange(S)
    with torch.no_grad():
        m(prompt[None], attention=CachePrefill(kv, 0))
        kv[:, :, 1] = 0.5   # stale content copy_rows must overwrite
        copy_rows(kv, torch.tensor([0]), torch.tensor([1]), 6)
        # the two rows take different next tokens: each must equal the whole-row forward
        nxt = torch.tensor([3, 11])
        pos = torch.tensor([6, 6])
        hd = m(nxt[:, None], pos[:, None], CacheDecode(kv, pos, S, rows, span))
        for r in range(2):
            whole = m(torch.cat([prompt, nxt[r:r + 1]])[None])[0, -1]
            torch.testing.assert_close(hd[r, 0], whole, atol=1e-5, rtol=1e-5)


def test_forward_variants_equal_the_plain_forward():
    m = _model(seed=2)
    ids = torch.randint(0, 16, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain = m(ids)
        torch.testing.assert_close(m(ids, step=FusedAddNormStep()), plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m(ids, step=LayerStep()), plain)
    # checkpointed: same values and same gradients
    m.requires_grad_(True)
    out = m(ids)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    ck = m(ids, checkpoint=True)
    torch.testing.assert_close(ck, out)
    ck.square().sum().backward()
    for p, g in zip(m.parameters(), grads):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_compiled_blocks_run_the_same_forward():
    m = _model(seed=3)
    ids = torch.randint(0, 16, (2, 9), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        plain = m(ids)
        m.compile_blocks(True, backend="eager")
        try:
            torch.testing.assert_close(m(ids), plain)
            assert m._block_fns is not None
        finally:
            m.compile_blocks(False)
