"""The vocabulary cut with SentencePiece-style tokenizers (Llama 2, Mistral) and byte-level BPE ones
(GPT-2, Qwen, Llama 3): which token each compact symbol gets, and what an unusable tokenizer is told.

A SentencePiece-style tokenizer puts a word-start piece before a text, so ``"0"`` alone encodes as
``["▁", "0"]`` although ``"0"`` is one token, and ``"\\n"`` is the byte-fallback piece ``<0x0A>``.
The tokenizers here are built in memory with the ``tokenizers`` library; nothing is downloaded.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from arcfast.arc import vocab as T
from arcfast.model.decoder import build_model
from arcfast.model.checkpoint import compact_token_ids, load_model
from arcfast.model.hf import compact_tokenizer, to_hf

from test_model import randomize_norms, small_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

WORD_START = "\u2581"  # SentencePiece's "▁"


def sp_vocab(seed: int = 0, newline_byte: bool = True) -> dict:
    """A Llama-2-like vocabulary: specials, the word-start piece, 256 byte pieces (only when
    ``newline_byte``; otherwise ``<0x0A>`` is missing), then the compact symbols shuffled among other
    letters and word-start merges (``"▁I"``...)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, WORD_START: 3}
    for b in range(256):
        if newline_byte or b != 0x0A:
            vocab[f"<0x{b:02X}>"] = len(vocab)
    rest = [s for s in T.SYMBOLS if s != "\n"] + [chr(ord("a") + i) for i in range(20)]
    rest += [WORD_START + s for s in ("I", "O", "E", "B", "a", "b")]
    for j in np.random.default_rng(seed).permutation(len(rest)):
        vocab[rest[j]] = len(vocab)
    return vocab


def sp_tokenizer(kind: str = "bpe", layout: str = "metaspace", newline_byte: bool = True, seed: int = 0):
    """A ``tokenizers.Tokenizer`` of Llama 2's shape: ``layout="metaspace"`` is the current
    tokenizer.json layout (a Metaspace pre-tokenizer that prepends "▁"), ``"normalizer"`` the older
    one (Prepend("▁") and Replace(" ", "▁") normalisers); ``kind`` the model, BPE or Unigram, with
    byte fallback."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = sp_vocab(seed, newline_byte)
    if kind == "bpe":
        merges = [(WORD_START, p[1:]) for p in vocab if p.startswith(WORD_START) and len(p) == 2]
        model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    else:
        # Scores favour longer pieces ("▁I" over "▁" + "I"), as a trained unigram model's do.
        pieces = sorted(vocab, key=vocab.get)
        model = models.Unigram([(p, -1.0 if len(p) > 1 else -3.0) for p in pieces], unk_id=0, byte_fallback=True)
    tok = Tokenizer(model)
    if layout == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always", split=False)
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend(WORD_START), normalizers.Replace(" ", WORD_START)])
    tok.decoder = decoders.Sequence([decoders.Replace(WORD_START, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


def expected_ids(tok) -> list[int]:
    """Each symbol's own piece; the newline's byte piece; the objectives' symbols (C ? Y N: not in
    these vocabularies) their byte pieces."""
    grid = [tok.token_to_id("<0x0A>" if s == "\n" else s) for s in T.SYMBOLS]
    return grid + [tok.token_to_id(s) or tok.token_to_id(f"<0x{ord(s):02X}>") for s in T.OBJECTIVE_SYMBOLS]


def llama_tokenizer(tok):
    from transformers import LlamaTokenizerFast

    return LlamaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def write_sp_checkpoint(tmp_path, arch: str, tok):
    hf_tok = llama_tokenizer(tok)
    model = randomize_norms(build_model(small_cfg(arch, vocab=tok.get_vocab_size()), seed=7))
    hf = to_hf(model, attn_implementation="eager").eval()
    d = tmp_path / f"sp-{arch}"
    hf.save_pretrained(str(d))
    hf_tok.save_pretrained(str(d))
    return d, hf


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
@pytest.mark.parametrize("layout", ["metaspace", "normalizer"])
def test_sentencepiece_symbols_get_their_own_pieces(tmp_path, kind, layout):
    tok = sp_tokenizer(kind, layout)
    # The shape that used to be refused: a word-start piece before "0", "▁I" for "I" alone.
    assert tok.encode("0", add_special_tokens=False).tokens == [WORD_START, "0"]
    assert tok.encode("\n", add_special_tokens=False).tokens == [WORD_START, "<0x0A>"]
    assert tok.encode("I", add_special_tokens=False).tokens == [WORD_START + "I"]
    tok.save(str(tmp_path / "tokenizer.json"))

    ids = compact_token_ids(tmp_path)
    want = expected_ids(tok)
    assert ids == want
    assert [tok.id_to_token(t) for t in ids] == [*"0123456789", "<0x0A>", *"IOEBP", "<0x43>", "<0x3F>", "<0x59>",
                                                 "<0x4E>"]
    # These are the tokens the tokenizer itself uses inside ARC text (after the text's first piece).
    text = tok.encode("I\n12\n30\nO\n4\nE\nB\nP", add_special_tokens=False).ids
    assert set(text[1:]) <= set(ids)


def test_transformers_tokenizer_gives_the_same_ids(tmp_path):
    """The path for a tokenizer object, or a directory without tokenizer.json (transformers loads it)."""
    from transformers import AutoTokenizer

    tok = sp_tokenizer()
    hf_tok = llama_tokenizer(tok)
    assert hf_tok.encode("0", add_special_tokens=False) == [3, tok.token_to_id("0")]
    assert compact_token_ids(tmp_path, hf_tok) == expected_ids(tok)
    hf_tok.save_pretrained(str(tmp_path / "t"))
    assert compact_token_ids(tmp_path, AutoTokenizer.from_pretrained(str(tmp_path / "t"))) == expected_ids(tok)


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_sentencepiece_checkpoint_loads_with_the_cut(tmp_path, arch):
    tok = sp_tokenizer(seed=3)
    d, hf = write_sp_checkpoint(tmp_path, arch, tok)
    keep = expected_ids(tok)
    model = load_model(str(d))
    # The grid ids and the objectives' (byte pieces here): 20 rows, each its symbol's token's.
    assert model.config.vocab_size == T.OBJECTIVE_VOCAB and list(model.config.source_token_ids) == keep
    compact = torch.randint(0, T.OBJECTIVE_VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    full_ids = torch.tensor(keep)[compact]
    with torch.no_grad():
        theirs = hf(full_ids).logits[..., keep]
        ours = model.logits(model(compact))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)

    full = load_model(str(d), vocab="full")
    assert list(full.config.token_ids) == keep and full.config.vocab_size == tok.get_vocab_size()


def test_a_symbol_without_a_token_is_refused_with_what_to_do(tmp_path):
    tok = sp_tokenizer(newline_byte=False)          # no "\n" piece and no <0x0A> byte piece
    tok.save(str(tmp_path / "tokenizer.json"))
    unk = tok.token_to_id("<unk>")
    with pytest.raises(ValueError) as e:
        compact_token_ids(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg
    assert (f"compact symbol '\\n' (id 10, ROW) is 2 tokens [3, {unk}] ('{WORD_START}' '<unk>') in this "
            f"tokenizer, '<unk>' being the unknown token, and the vocabulary has no token '\\n' nor byte "
            f"piece '<0x0A>'") in msg
    assert "needs a tokenizer with a distinct single token for each of the digits 0-9, the newline" in msg
    assert "add_tokens" in msg and "resize_token_embeddings" in msg

    # The advice works: with the symbol added, the same tokenizer passes.
    tok.add_tokens(["\n"])
    tok.save(str(tmp_path / "tokenizer.json"))
    ids = compact_token_ids(tmp_path)
    assert ids[T.ROW] == tok.token_to_id("\n") and ids[:10] == expected_ids(tok)[:10]


def test_a_symbol_that_is_the_unknown_token_is_refused(tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {s: i for i, s in enumerate(T.SYMBOLS) if s != "P"}
    vocab["<unk>"] = len(vocab)
    Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"'P' \(id 15, PAD\) is the token \[15\] \('<unk>'\) in this "
                                         r"tokenizer, '<unk>' being the unknown token.*needs a tokenizer"):
        compact_token_ids(tmp_path)


# ----------------------------------------------------------------------------------------------
# Byte-level BPE: each symbol's token is exactly its encoding, as it always was

def byte_level_tokenizer(add_prefix_space: bool = False):
    """A GPT-2/Qwen-style tokenizer, trained here on a little ARC-like text (so "\\n" is "Ċ" and
    there are merges such as "12" or "Ċ0")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    rng = np.random.default_rng(0)
    corpus = ["I\n" + "\n".join("".join(map(str, row)) for row in rng.integers(0, 10, (4, 5))) + "\nO\nE B P"
              for _ in range(200)]
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


def test_byte_level_bpe_ids_are_the_encodings(tmp_path):
    tok = byte_level_tokenizer()
    assert len(tok.get_vocab()) > 256 + 16   # merges were learnt
    tok.save(str(tmp_path / "tokenizer.json"))
    encoded = []
    for s in T.SYMBOLS + T.OBJECTIVE_SYMBOLS:
        e = tok.encode(s, add_special_tokens=False).ids
        assert len(e) == 1
        encoded.append(e[0])
    assert compact_token_ids(tmp_path) == encoded
    assert tok.id_to_token(encoded[T.ROW]) == "\u010a"   # "Ċ"


def test_compact_tokenizer_maps_to_itself(tmp_path):
    compact_tokenizer().save_pretrained(str(tmp_path))
    assert compact_token_ids(tmp_path) == list(range(T.VOCAB_SIZE))
    assert compact_token_ids(tmp_path, compact_tokenizer()) == list(range(T.VOCAB_SIZE))
