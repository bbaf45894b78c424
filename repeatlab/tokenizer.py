"""Tokenizers: byte-level (vocab 256, the default) and byte-level BPE (trained with the `tokenizers` library).

Token id 0 is the end-of-text / BOS token for every tokenizer (docs/architecture.md):
  - ByteTokenizer maps byte b to id b and removes NUL bytes from text, so id 0 never occurs inside a document.
  - BPETokenizer reserves `<|endoftext|>` as id 0; the literal string `<|endoftext|>` inside a document is encoded as
    ordinary text (never as id 0).
`decode` drops id 0 (it is a separator, not text).

Common API: encode(text) -> list[int]; encode_batch(texts) -> list[np.ndarray]; decode(ids) -> str;
vocab_size; eot_id; to_manifest() -> the manifest's "tokenizer" section.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from repeatlab import layout
from repeatlab.errors import ConfigError, CorpusError

EOT_ID = 0
EOT_TOKEN = "<|endoftext|>"
TOKENIZER_FILE = layout.TOKENIZER


def token_dtype(vocab_size: int) -> np.dtype:
    """Shard dtype for a vocabulary: uint16 when every id fits (vocab_size <= 65536), else uint32."""
    if vocab_size <= 0:
        raise ConfigError(f"vocab_size: {vocab_size} is not allowed: a positive vocabulary size")
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ConfigError(f"vocab_size: {vocab_size} is not allowed: at most 2^32 token ids fit a uint32 shard")


class ByteTokenizer:
    """id = byte value of the UTF-8 encoding; NUL bytes are removed (id 0 is EOT)."""

    kind = "byte"
    vocab_size = 256
    eot_id = EOT_ID

    def encode_array(self, text: str) -> np.ndarray:
        """uint8 ids of one text (a copy; fast path: one encode, one NUL strip, one frombuffer)."""
        data = text.encode("utf-8", errors="surrogatepass")
        if b"\x00" in data:
            data = data.replace(b"\x00", b"")
        return np.frombuffer(data, dtype=np.uint8)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode_array(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
        arr = arr[arr != EOT_ID]
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise CorpusError(f"byte tokenizer: ids must be in [0, 255]; got {int(arr.min())}..{int(arr.max())}")
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_manifest(self) -> dict:
        return {"kind": "byte", "vocab_size": 256, "eot_id": EOT_ID, "file": None}


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenization) with `<|endoftext|>` = id 0."""

    kind = "bpe"
    eot_id = EOT_ID

    def __init__(self, tokenizer) -> None:  # a tokenizers.Tokenizer
        self._tok = tokenizer
        self._tok.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, never id 0
        eot = self._tok.token_to_id(EOT_TOKEN)
        if eot != EOT_ID:
            raise CorpusError(f"BPE tokenizer: {EOT_TOKEN!r} has id {eot}; repeatlab needs it at id {EOT_ID}")

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
        """Train on an iterator of documents (the train split only). Deterministic for the same texts."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257 + 1:
            raise ConfigError(
                f"corpus.vocab_size: {vocab_size} is not allowed: BPE needs more than 257 "
                "(256 byte symbols + <|endoftext|>); use at least 512"
            )
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[EOT_TOKEN],  # first special token -> id 0
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_batched(texts), trainer=trainer)
        return cls(tok)

    @classmethod
    def from_str(cls, json_text: str, where: str = TOKENIZER_FILE) -> BPETokenizer:
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_str(json_text)
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise CorpusError(f"{where}: not a valid tokenizers JSON file ({exc})") from exc
        return cls(tok)

    @classmethod
    def load(cls, url: str) -> BPETokenizer:
        from repeatlab import storage

        return cls.from_str(storage.read_text(url), where=url)

    def to_str(self) -> str:
        return self._tok.to_str()

    def save(self, url: str) -> None:
        from repeatlab import storage

        storage.write_text(url, self.to_str())

    # -- use ------------------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.fromiter(e.ids, dtype=np.uint32, count=len(e)) for e in encs]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, np.ndarray) else ids)]
        return self._tok.decode(ids, skip_special_tokens=True)

    def to_manifest(self) -> dict:
        return {"kind": "bpe", "vocab_size": self.vocab_size, "eot_id": EOT_ID, "file": TOKENIZER_FILE}


def _batched(texts: Iterable[str], size: int = 256) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_tokenizer(corpus_url: str, manifest: dict):
    """The tokenizer a prepared corpus was written with (from its manifest's "tokenizer" section)."""
    from repeatlab import storage

    spec = manifest.get("tokenizer") or {}
    kind = spec.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        name = spec.get("file") or TOKENIZER_FILE
        tok = BPETokenizer.load(storage.join(corpus_url, name))
        if spec.get("vocab_size") not in (None, tok.vocab_size):
            raise CorpusError(
                f"{storage.join(corpus_url, name)}: vocabulary of {tok.vocab_size} tokens does not "
                f"match the manifest's tokenizer.vocab_size {spec.get('vocab_size')}"
            )
        return tok
    raise CorpusError(
        f"{layout.Corpus(corpus_url).manifest}: tokenizer.kind {kind!r} is not allowed: expected 'byte' or 'bpe'"
    )
