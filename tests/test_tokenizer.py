"""Byte and BPE tokenizers: round trips, id 0 reserved for EOT, dtype choice, save/load, speed of the byte path."""

import random
import time

import numpy as np
import pytest

from repeatlab import storage
from repeatlab.errors import CorpusError
from repeatlab.tokenizer import EOT_ID, BPETokenizer, ByteTokenizer, load_tokenizer, token_dtype

WORDS = [
    "thou",
    "art",
    "the",
    "king",
    "of",
    "denmark",
    "and",
    "god",
    "said",
    "let",
    "there",
    "be",
    "light",
    "wherefore",
    "romeo",
    "paradise",
    "lost",
    "héllo",
    "wörld",
    "naïve",
    "—",
    "12",
    "34",
]


def _docs(n: int, seed: int = 0, words: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + rng.choice([".", "!\n", "?\n\n"]) for _ in range(n)]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(_docs(300), vocab_size=512)


def test_byte_round_trip_and_nul_stripped():
    tok = ByteTokenizer()
    text = "Héllo, wörld — ✓ 日本語\n\ttab <|endoftext|>"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    with_nul = "a\x00b\x00\x00c"
    assert tok.encode(with_nul) == [97, 98, 99] and EOT_ID not in tok.encode(with_nul)
    batch = tok.encode_batch(["abc", "", "d\x00e"])
    assert [b.tolist() for b in batch] == [[97, 98, 99], [], [100, 101]]
    assert tok.decode([104, 105, EOT_ID, 33]) == "hi!"  # EOT is a separator, not text
    assert tok.vocab_size == 256 and tok.eot_id == 0
    assert tok.to_manifest() == {"kind": "byte", "vocab_size": 256, "eot_id": 0, "file": None}


def test_byte_encoding_is_fast():
    text = ("The quick brown fox jumps over the lazy dog; wörld. " * 2000 + "\n") * 50  # ~5 MB
    tok = ByteTokenizer()
    tok.encode_batch([text])  # warm up
    t = time.perf_counter()
    (arr,) = tok.encode_batch([text])
    mb_s = len(text) / (time.perf_counter() - t) / 1e6
    assert arr.dtype == np.uint8 and arr.size == len(text.encode())
    assert mb_s >= 50, f"byte encoding at {mb_s:.0f} MB/s, target >= 50"


def test_token_dtype_choice():
    assert token_dtype(256) == np.uint16
    assert token_dtype(512) == np.uint16
    assert token_dtype(65536) == np.uint16  # ids 0..65535 fit
    assert token_dtype(65537) == np.uint32
    assert token_dtype(100_000) == np.uint32
    assert token_dtype(1 << 20) == np.uint32


def test_bpe_round_trip_and_eot(bpe):
    assert bpe.eot_id == 0 and 300 <= bpe.vocab_size <= 512
    for doc in _docs(20, seed=1) + ["unseen words: zebra quokka ÆØÅ 🙂", "  leading spaces\n\nand blank lines  "]:
        ids = bpe.encode(doc)
        assert EOT_ID not in ids
        assert bpe.decode(ids) == doc
    # the literal special string inside a document is text, never id 0
    ids = bpe.encode("a <|endoftext|> b")
    assert EOT_ID not in ids and bpe.decode(ids) == "a <|endoftext|> b"
    batch = bpe.encode_batch(["thou art the king", "let there be light"])
    assert [b.tolist() for b in batch] == [bpe.encode("thou art the king"), bpe.encode("let there be light")]
    assert all(b.dtype == np.uint32 for b in batch)
    assert bpe.decode(np.concatenate([batch[0], [0]])) == "thou art the king"
    # merges were learned: common text compresses below one token per byte
    doc = _docs(1, seed=5)[0]
    assert len(bpe.encode(doc)) < 0.6 * len(doc.encode())


def test_bpe_training_is_deterministic(bpe):
    again = BPETokenizer.train(_docs(300), vocab_size=512)
    assert again.to_str() == bpe.to_str()


def test_bpe_save_load_through_manifest(bpe, tmp_path):
    url = storage.join("file://" + str(tmp_path), "corpora", "abc")
    bpe.save(storage.join(url, "tokenizer.json"))
    manifest = {"tokenizer": bpe.to_manifest()}
    assert manifest["tokenizer"] == {"kind": "bpe", "vocab_size": bpe.vocab_size, "eot_id": 0, "file": "tokenizer.json"}
    loaded = load_tokenizer(url, manifest)
    text = "wherefore art thou romeo"
    assert loaded.encode(text) == bpe.encode(text)
    assert isinstance(load_tokenizer(url, {"tokenizer": {"kind": "byte", "vocab_size": 256}}), ByteTokenizer)
    with pytest.raises(CorpusError, match="tokenizer.kind 'wordpiece' is not allowed"):
        load_tokenizer(url, {"tokenizer": {"kind": "wordpiece"}})
    with pytest.raises(CorpusError, match="does not match the manifest"):
        load_tokenizer(url, {"tokenizer": {"kind": "bpe", "vocab_size": 99, "file": "tokenizer.json"}})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CorpusError, match="bad.json: not a valid tokenizers JSON"):
        BPETokenizer.load(str(tmp_path / "bad.json"))
