"""arcfast.model.attention.TreeAttention against a plain masked softmax written from its rule."""
import math

import numpy as np
import pytest
import torch

from arcfast.model.attention import PackedAttention, TreeAttention, tree_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def tree_rows(rows, L):
    """segment_ids and branch_ids int32 [R, L] of rows holding trees, then padding. A tree is
    (trunk length, [continuation lengths]); segments are numbered across rows."""
    seg = np.full((len(rows), L), -1, np.int32)
    br = np.zeros((len(rows), L), np.int32)
    s = 0
    for r, trees in enumerate(rows):
        pos = 0
        for trunk, conts in trees:
            n = trunk + sum(conts)
            seg[r, pos:pos + n] = s
            pos += trunk
            for b, c in enumerate(conts, start=1):
                br[r, pos:pos + c] = b
                pos += c
            s += 1
        assert pos <= L
    return seg, br


def plain_tree_attention(q, k, v, seg, br):
    """float64 [R, L, H, D] over the real positions (padding left zero): each query's softmax over
    the keys the rule allows, one position at a time."""
    R, L, H, D = q.shape
    rep = H // k.shape[2]
    q, k, v = q.double(), k.double().repeat_interleave(rep, 2), v.double().repeat_interleave(rep, 2)
    out = torch.zeros(R, L, H, D, dtype=torch.float64)
    for r in range(R):
        for i in range(L):
            if seg[r, i] < 0:
                continue
            keys = [j for j in range(i + 1) if seg[r, j] == seg[r, i] and br[r, j] in (0, br[r, i])]
            for h in range(H):
                s = torch.stack([q[r, i, h] @ k[r, j, h] for j in keys]) / math.sqrt(D)
                out[r, i, h] = torch.softmax(s, 0) @ v[r, keys, h]
    return out


ROWS = [[(6, [3, 1, 4]), (2, [5])],     # two trees, one with a single continuation
        [(9, [])],                      # a trunk alone
        [(1, [2, 2]), (3, [1, 1, 1])],  # a one-token trunk; one-token continuations
        [(4, [6, 2])]]


def _qkv(R, L, H, Hkv, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(R, L, H, D, generator=g), torch.randn(R, L, Hkv, D, generator=g),
            torch.randn(R, L, Hkv, D, generator=g))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("impl", ["sdpa", "flex", "loop"])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])
def test_tree_attention_equals_a_plain_masked_softmax(impl, heads):
    L, D = 24, 8
    seg, br = tree_rows(ROWS, L)
    assert (seg < 0).any() and (br > 1).any()       # padding and several continuations present
    q, k, v = _qkv(len(ROWS), L, *heads, D)
    att = TreeAttention(seg, br, impl)
    assert att.impl == impl
    out = att(q, k, v)
    assert out.shape == q.shape and torch.isfinite(out).all()
    want = plain_tree_attention(q, k, v, seg, br)
    real = torch.from_numpy(seg >= 0)
    torch.testing.assert_close(out[real].double(), want[real], rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("impl", ["sdpa", "flex", "loop"])
def test_tree_attention_of_other_layouts(impl):
    """Branches that come back after another one, trunk tokens after branches, a segment without a
    trunk: the rule holds whatever the layout (``loop`` takes its general path for these)."""
    seg = np.array([[0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, -1],
                    [2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3]], np.int32)
    br = np.array([[0, 0, 1, 2, 2, 1, 0, 2, 1, 1, 2, 2, 0],
                   [0, 1, 1, 0, 1, 2, 0, 0, 0, 3, 3, 1, 1]], np.int32)
    q, k, v = _qkv(2, 13, 4, 2, 8, seed=2)
    out = TreeAttention(seg, br, impl)(q, k, v)
    want = plain_tree_attention(q, k, v, seg, br)
    real = torch.from_numpy(seg >= 0)
    torch.testing.assert_close(out[real].double(), want[real], rtol=1e-5, atol=1e-5)


def test_tree_mask_rule():
    seg, br = tree_rows([[(2, [2, 1])]], 6)       # trunk 0-1, continuation 1: 2-3, continuation 2: 4
    m = tree_mask(torch.from_numpy(seg), torch.from_numpy(br))[0, 0]
    assert m[1, 0] and not m[0, 1]                 # the trunk is causal
    assert m[3, 0] and m[3, 1] and m[3, 2]         # a continuation sees the trunk and itself
    assert not m[4, 2] and not m[4, 3] and m[4, 1]  # never another continuation
    assert m[5, 5] and not m[5, 4]                 # padding: itself only


def test_one_continuation_per_tree_is_packed_causal_attention():
    rows = [[(5, [4]), (3, [2])], [(7, [6])]]
    L = 14
    seg, br = tree_rows(rows, L)
    q, k, v = _qkv(2, L, 4, 2, 8, seed=1)
    cu = [0, 9, 14, 27, 28]
    packed = PackedAttention(torch.from_numpy(seg), "loop", cu_seqlens=np.array(cu, np.int32))(q, k, v)
    tree = TreeAttention(seg, br, "loop")(q, k, v)
    real = torch.from_numpy(seg >= 0)
    torch.testing.assert_close(tree[real], packed[real], rtol=1e-5, atol=1e-6)


def test_tree_attention_refuses_bad_layouts():
    seg, br = tree_rows([[(2, [2])]], 5)
    with pytest.raises(ValueError, match="must be one of"):
        TreeAttention(seg, br, "varlen")
    with pytest.raises(ValueError, match="same"):
        TreeAttention(seg, br[:, :4], "sdpa")
    split = np.array([[0, 0, 1, 0, -1]], np.int32)
    with pytest.raises(ValueError, match="segment 0 of row 0 is not contiguous"):
        TreeAttention(split, np.zeros_like(split), "loop")
