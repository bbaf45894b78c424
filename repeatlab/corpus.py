"""Prepare a corpus: read documents, drop exact duplicates, split by document hash, tokenize, write token shards.

    {root}/corpora/{corpus_id}/train.bin, test.bin, probe.bin [, ood.bin] [, tokenizer.json], config.json, manifest.json

Inputs: any fsspec URL, a glob, or a folder (every file under it): plain text (one document per file, or one per
blank-line-separated paragraph with corpus.split_on_blank_lines), JSONL (corpus.text_field), Parquet (a text column);
gzip and zstd transparently (by extension or magic bytes). `url: default` is the embedded default corpus.

corpus_id = stable_hash of the input files' (bytes, sha256) in order and every corpus setting except the URL itself
(the same content under another URL gives the same id). A prepare that finds the id's manifest.json reuses it without
reading the documents again. The manifest is written last, so an interrupted prepare is invisible.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import re
import time
from typing import Any

import numpy as np

from repeatlab import __version__, layout, logs, storage
from repeatlab.config import CorpusConfig, stable_hash
from repeatlab.errors import CorpusError, StorageError
from repeatlab.tokenizer import EOT_ID, BPETokenizer, ByteTokenizer, token_dtype

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
SPLITS = ("train", "test", "probe")
TEXT_EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
COMPRESSION_EXTENSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_GLOB_CHARS = re.compile(r"[*?\[]")
_KEEP_IN_MEMORY = 512 << 20  # hold raw inputs between hashing and parsing up to this many bytes


# ----------------------------------------------------------------------------------------------------------------------
# Finding and reading input files


corpus_url = layout.corpus_url  # {root}/corpora/{corpus_id}


def _file_url(fs, url: str, path: str) -> str:
    if storage.is_local(url):
        return path
    return fs.unstrip_protocol(path)


def list_input_files(url: str) -> list[str]:
    """Sorted URLs of the files a corpus URL names: one file, a glob, or every file under a folder."""
    fs, path = storage.filesystem(url)
    try:
        if _GLOB_CHARS.search(path):
            paths = [p for p in fs.glob(path) if not fs.isdir(p)]
            what = "no files match the glob"
        elif fs.isdir(path):
            paths = [p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith(".")]
            what = "the folder holds no files"
        elif fs.exists(path):
            paths = [path]
            what = ""
        else:
            raise CorpusError(f"{url}: not found: corpus.url must name an existing file, folder or glob (or 'default')")
    except (CorpusError, StorageError):
        raise
    except Exception as exc:  # botocore / aiohttp / OSError: storage unreachable or refused
        raise StorageError(f"{url}: cannot list the corpus files: {type(exc).__name__}: {exc}") from exc
    if not paths:
        raise CorpusError(f"{url}: {what}; corpus.url must name at least one readable file")
    return [_file_url(fs, url, p) for p in sorted(paths)]


def _strip_compression(name: str) -> tuple[str, str | None]:
    lower = name.lower()
    for ext, kind in COMPRESSION_EXTENSIONS.items():
        if lower.endswith(ext):
            return name[: -len(ext)], kind
    return name, None


def detect_format(file_url: str, fmt: str = "auto") -> str:
    """The document format of one file: cfg.format, or from the extension (after .gz/.zst) when it is 'auto'."""
    if fmt != "auto":
        return fmt
    base, _ = _strip_compression(file_url.rstrip("/").rsplit("/", 1)[-1])
    dot = base.rfind(".")
    ext = base[dot:].lower() if dot > 0 else ""
    if ext in TEXT_EXTENSIONS:
        return TEXT_EXTENSIONS[ext]
    raise CorpusError(
        f"{file_url}: cannot tell the format from the extension {ext or '(none)'!r}: allowed "
        f"{', '.join(sorted(TEXT_EXTENSIONS))} (optionally + .gz/.zst), or set corpus.format "
        "to text, jsonl or parquet"
    )


def decompress(data: bytes, file_url: str) -> bytes:
    """gzip / zstd by magic bytes (so a mislabelled file still reads); anything else is returned as is."""
    try:
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
        if data[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard

            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
                return reader.read()
    except Exception as exc:
        raise CorpusError(f"{file_url}: corrupt compressed file ({type(exc).__name__}: {exc})") from exc
    _, kind = _strip_compression(file_url)
    if kind is not None and data:
        raise CorpusError(f"{file_url}: the name says {kind} but the content is not {kind}-compressed")
    return data


def _utf8(data: bytes, file_url: str, line: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f" line {line}" if line else f" byte {exc.start}"
        raise CorpusError(f"{file_url}:{where}: not UTF-8 text ({exc.reason}); convert the file to UTF-8") from exc


def parse_documents(raw: bytes, file_url: str, fmt: str, cfg: CorpusConfig) -> list[str]:
    """The documents of one file (raw bytes, possibly compressed). NUL characters are removed (id 0 is EOT)."""
    return parse_documents_and_sources(raw, file_url, fmt, cfg)[0]


def parse_documents_and_sources(
    raw: bytes, file_url: str, fmt: str, cfg: CorpusConfig
) -> tuple[list[str], list[str | None]]:
    """(documents, each one's source label from cfg.source_field, or None without one) of one file."""
    data = decompress(raw, file_url)
    sources: list[str | None] | None = None
    if fmt == "text":
        text = _utf8(data, file_url).lstrip("\ufeff")
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        docs = re.split(r"\n[ \t\r\f\v]*\n", text) if cfg.split_on_blank_lines else [text]
    elif fmt == "jsonl":
        docs, sources = _parse_jsonl(data, file_url, cfg.text_field, cfg.source_field)
    elif fmt == "parquet":
        docs, sources = _parse_parquet(data, file_url, cfg.text_field, cfg.source_field)
    else:
        raise CorpusError(f"{file_url}: format {fmt!r} is not allowed: expected text, jsonl or parquet")
    docs = [d.replace("\x00", "") if "\x00" in d else d for d in docs]
    return docs, sources if sources is not None else [None] * len(docs)


def _parse_jsonl(
    data: bytes, file_url: str, field: str, source_field: str | None = None
) -> tuple[list[str], list[str | None]]:
    docs: list[str] = []
    sources: list[str | None] = []
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except UnicodeDecodeError:
            _utf8(line, file_url, n)
            raise
        except json.JSONDecodeError as exc:
            raise CorpusError(
                f"{file_url}: line {n}: not valid JSON ({exc.msg}); each line must be one JSON object"
            ) from exc
        if not isinstance(obj, dict):
            raise CorpusError(
                f"{file_url}: line {n}: a JSON {type(obj).__name__}, expected an object with the text field {field!r}"
            )
        if field not in obj:
            keys = ", ".join(sorted(map(str, obj))[:10]) or "none"
            raise CorpusError(
                f"{file_url}: line {n}: no field {field!r} (fields present: {keys}); set "
                "corpus.text_field to the field that holds the text"
            )
        value = obj[field]
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise CorpusError(f"{file_url}: line {n}: field {field!r} is a {type(value).__name__}, expected a string")
        docs.append(value)
        sources.append(None if source_field is None or obj.get(source_field) is None else str(obj[source_field]))
    return docs, sources


def _parse_parquet(
    data: bytes, file_url: str, column: str, source_field: str | None = None
) -> tuple[list[str], list[str | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(io.BytesIO(data))
    except Exception as exc:
        raise CorpusError(f"{file_url}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    names = pf.schema_arrow.names
    if column not in names:
        raise CorpusError(
            f"{file_url}: no column {column!r} (columns: {', '.join(names[:20]) or 'none'}); set "
            "corpus.text_field to the column that holds the text"
        )
    col = pf.read(columns=[column]).column(column)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise CorpusError(f"{file_url}: column {column!r} has type {col.type}, expected a string column")
    texts = ["" if v is None else v for v in col.to_pylist()]
    if source_field is None or source_field not in names:
        return texts, [None] * len(texts)
    return texts, [
        None if v is None else str(v) for v in pf.read(columns=[source_field]).column(source_field).to_pylist()
    ]


# ----------------------------------------------------------------------------------------------------------------------
# Dedup and split


def normalize(text: str) -> str:
    """Whitespace-normalized text: the identity of a document for deduplication and splitting."""
    return " ".join(text.split())


def _doc_hash(normalized: str, salt: str) -> bytes:
    return hashlib.sha256((salt + normalized).encode("utf-8", errors="surrogatepass")).digest()


def _split_from_hash(h: bytes, test_fraction: float, probe_fraction: float) -> str:
    u = int.from_bytes(h[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + probe_fraction:
        return "probe"
    return "train"


def split_of(normalized: str, salt: str, test_fraction: float, probe_fraction: float) -> str:
    """train / test / probe from sha256(salt + normalized text): deterministic, independent of order."""
    return _split_from_hash(_doc_hash(normalized, salt), test_fraction, probe_fraction)


def chunk_text(text: str, max_tokens: int) -> list[str]:
    """Pieces of about `max_tokens` byte-level tokens (UTF-8 bytes) each, cut at line ends; a longer line is cut at
    whitespace (or anywhere, when it has none). Whitespace-only pieces are dropped. Counted in bytes rather than in
    the corpus's tokens because the split (and so the chunking) comes before a BPE tokenizer is trained on the train
    split: with BPE a piece holds roughly a quarter as many tokens."""
    if max_tokens <= 0 or len(text) * 4 <= max_tokens or len(text.encode("utf-8", "surrogatepass")) <= max_tokens:
        return [text]
    pieces: list[str] = []
    current: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal current, size
        if current:
            pieces.append("".join(current))
        current, size = [], 0

    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8", "surrogatepass"))
        if size + n > max_tokens:
            flush()
        if n > max_tokens:
            pieces.extend(_cut_line(line, max_tokens))
            continue
        current.append(line)
        size += n
    flush()
    return [p for p in pieces if p.strip()]


def _cut_line(line: str, max_tokens: int) -> list[str]:
    out: list[str] = []
    current, size = "", 0
    for word in re.split(r"(?<=\s)(?=\S)", line):  # words with their trailing whitespace
        n = len(word.encode("utf-8", "surrogatepass"))
        if size + n > max_tokens and current:
            out.append(current)
            current, size = "", 0
        while n > max_tokens:  # one "word" longer than a piece: cut it by characters
            cut = max(1, max_tokens // 4)
            out.append(word[:cut])
            word = word[cut:]
            n = len(word.encode("utf-8", "surrogatepass"))
        current += word
        size += n
    if current:
        out.append(current)
    return out


def dedup_and_split(
    docs: list[str], cfg: CorpusConfig, sources: list[str] | None = None
) -> tuple[dict[str, list[str]], dict[str, int], dict[str, list[str]]]:
    """Cut documents into chunks (cfg.chunk_tokens), drop empty and exact-duplicate ones (whitespace-normalized),
    then split by hash. Returns (documents per split, counts, each split document's source label)."""
    seen: set[bytes] = set()
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    split_sources: dict[str, list[str]] = {s: [] for s in SPLITS}
    counts = {"documents_read": len(docs), "duplicates_dropped": 0, "empty_dropped": 0, "chunks": 0}
    chunk = cfg.chunk_tokens or 0
    for i, doc in enumerate(docs):
        pieces = chunk_text(doc, chunk) if chunk else [doc]
        if not pieces:
            counts["empty_dropped"] += 1
            continue
        for text in pieces:
            counts["chunks"] += 1
            norm = normalize(text)
            if not norm:
                counts["empty_dropped"] += 1
                continue
            h = _doc_hash(norm, cfg.split_salt)  # one salted sha256 is both the dedup key and the split draw
            if h in seen:
                counts["duplicates_dropped"] += 1
                continue
            seen.add(h)
            name = _split_from_hash(h, cfg.test_fraction, cfg.probe_fraction)
            splits[name].append(text)
            split_sources[name].append(sources[i] if sources is not None else "")
    return splits, counts, split_sources


# ----------------------------------------------------------------------------------------------------------------------
# Split composition


MIN_SPLIT_DOCUMENTS = 50  # fewer documents in a split: it samples the corpus poorly
MAX_DOCUMENT_SHARE = 0.2  # one document above this share of a split's tokens dominates it


def split_composition(sources: dict[str, list[str]], lengths: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per split: documents and tokens per source, and each source's share of the split's tokens."""
    out: dict[str, dict] = {}
    for name, labels in sources.items():
        lens = np.asarray(lengths[name], dtype=np.int64)
        total = int(lens.sum())
        per: dict[str, dict] = {}
        for label, n in zip(labels, lens):
            row = per.setdefault(label, {"documents": 0, "tokens": 0})
            row["documents"] += 1
            row["tokens"] += int(n)
        for row in per.values():
            row["share"] = row["tokens"] / total if total else 0.0
        out[name] = dict(sorted(per.items()))
    return out


def split_warnings(lengths: dict[str, np.ndarray], chunk_tokens: int) -> list[str]:
    """Warnings for splits that cannot represent the corpus: too few documents, or one document dominating."""
    hint = (
        "set corpus.chunk_tokens (e.g. 2048) to cut documents into pieces before the split"
        if not chunk_tokens
        else f"lower corpus.chunk_tokens (now {chunk_tokens})"
    )
    out = []
    for name, lens in lengths.items():
        lens = np.asarray(lens)
        total = int(lens.sum())
        if 0 < len(lens) < MIN_SPLIT_DOCUMENTS:
            out.append(
                f"the {name} split has only {len(lens)} documents (fewer than {MIN_SPLIT_DOCUMENTS}): it is a "
                f"sample of a few documents, not of the corpus; {hint}"
            )
        if total and len(lens) and lens.max() > MAX_DOCUMENT_SHARE * total:
            out.append(
                f"one document is {lens.max() / total:.0%} of the {name} split's tokens (more than "
                f"{MAX_DOCUMENT_SHARE:.0%}): that document dominates every {name} number; {hint}"
            )
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Shards


def tokens_of(
    tokenizer, docs: list[str], dtype: np.dtype, batch: int = 1024, lengths: list | None = None
) -> np.ndarray:
    """Documents concatenated into one flat array, each followed by EOT (id 0); each document's token count (with
    its EOT) is appended to `lengths` when given."""
    parts: list[np.ndarray] = []
    for i in range(0, len(docs), batch):
        parts.extend(tokenizer.encode_batch(docs[i : i + batch]))
    if lengths is not None:
        lengths.extend(p.size + 1 for p in parts)
    total = sum(p.size for p in parts) + len(parts)
    out = np.empty(total, dtype=dtype)
    pos = 0
    for p in parts:
        out[pos : pos + p.size] = p
        pos += p.size
        out[pos] = EOT_ID
        pos += 1
    return out


def _write_array(url: str, arr: np.ndarray) -> str:
    """Write `arr` atomically; returns its sha256."""
    data = np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data
    with storage.atomic_local_file(url) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# prepare_corpus


def _read_inputs(url: str) -> tuple[list[dict], dict[str, bytes]]:
    files = list_input_files(url)
    infos: list[dict] = []
    held: dict[str, bytes] = {}
    held_bytes = 0
    for f in files:
        raw = storage.read_bytes(f)
        infos.append({"path": f, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})
        if held_bytes + len(raw) <= _KEEP_IN_MEMORY:
            held[f] = raw
            held_bytes += len(raw)
    return infos, held


def _documents(
    infos: list[dict], held: dict[str, bytes], cfg: CorpusConfig, fmt: str
) -> tuple[list[str], list[str], list[str]]:
    """(documents, formats of the files, each document's source: cfg.source_field's value, else its file's name)."""
    docs: list[str] = []
    formats: list[str] = []
    sources: list[str] = []
    for info in infos:
        f = info["path"]
        file_fmt = detect_format(f, fmt)
        formats.append(file_fmt)
        raw = held.pop(f, None)
        if raw is None:
            raw = storage.read_bytes(f)
            if hashlib.sha256(raw).hexdigest() != info["sha256"]:
                raise CorpusError(f"{f}: the file changed while the corpus was being prepared; run prepare again")
        file_docs, file_sources = parse_documents_and_sources(raw, f, file_fmt, cfg)
        name = f.rstrip("/").rsplit("/", 1)[-1]
        docs.extend(file_docs)
        sources.extend(name if label is None else label for label in file_sources)
    return docs, formats, sources


def _resolve(cfg: CorpusConfig) -> tuple[str, str, CorpusConfig]:
    """(url to read, format, effective config) for a corpus config; 'default' becomes the built JSONL."""
    if cfg.url.strip() == "default":
        from repeatlab import default_corpus

        path = default_corpus.default_corpus_path()
        chunk = default_corpus.DEFAULT_CHUNK_TOKENS if cfg.chunk_tokens is None else cfg.chunk_tokens
        return path, "jsonl", dataclasses.replace(cfg, text_field="text", format="jsonl", chunk_tokens=chunk)
    return cfg.url, cfg.format, dataclasses.replace(cfg, chunk_tokens=cfg.chunk_tokens or 0)


def corpus_id_of(cfg: CorpusConfig, files: list[dict], ood_files: list[dict] | None = None) -> str:
    """Content address: the input files' (bytes, sha256) in order + every setting that changes the output."""
    settings = dataclasses.asdict(cfg)
    settings.pop("url")  # the content, not the address, determines the output
    settings.pop("ood_url")
    for key in ("chunk_tokens", "source_field"):  # unset: the same id as before these settings existed
        if not settings.get(key):
            settings.pop(key, None)
    return stable_hash(
        {
            "format_version": FORMAT_VERSION,
            "files": [[f["bytes"], f["sha256"]] for f in files],
            "ood_files": None if ood_files is None else [[f["bytes"], f["sha256"]] for f in ood_files],
            "config": settings,
        }
    )


@dataclasses.dataclass
class Inputs:
    """A corpus config's input files, hashed (the bytes kept in memory up to _KEEP_IN_MEMORY), and its id."""

    fmt: str
    eff: CorpusConfig  # the effective config ('default' resolved, chunk_tokens decided)
    infos: list[dict]
    held: dict[str, bytes]
    ood_infos: list[dict] | None
    ood_held: dict[str, bytes]
    corpus_id: str


def resolve_inputs(cfg: CorpusConfig) -> Inputs:
    """Read and hash the input files; nothing is written to the study's storage."""
    url, fmt, eff = _resolve(cfg)
    infos, held = _read_inputs(url)
    ood_infos: list[dict] | None = None
    ood_held: dict[str, bytes] = {}
    if cfg.ood_url:
        ood_infos, ood_held = _read_inputs(cfg.ood_url)
    return Inputs(fmt, eff, infos, held, ood_infos, ood_held, corpus_id_of(eff, infos, ood_infos))


def identify(cfg: CorpusConfig, root: str) -> tuple[str, dict | None]:
    """(corpus id, its manifest under `root` or None when not prepared yet), without preparing anything."""
    corpus_id = resolve_inputs(cfg).corpus_id
    manifest_url = layout.Corpus(corpus_url(root, corpus_id)).manifest
    return corpus_id, (load_manifest(corpus_url(root, corpus_id)) if storage.exists(manifest_url) else None)


def _split_documents(cfg: CorpusConfig, inputs: Inputs) -> tuple[dict, dict, dict, list[str]]:
    """(documents per split, counts, sources per split, formats of the files): parsed, deduplicated and split by
    hash; CorpusError when a split is empty."""
    is_default = cfg.url.strip() == "default"
    # the default corpus names each work's file in "source"; its collection is the source of the composition
    docs, formats, doc_sources = _documents(
        inputs.infos,
        inputs.held,
        dataclasses.replace(inputs.eff, source_field="source") if is_default else inputs.eff,
        inputs.fmt,
    )
    if is_default:
        from repeatlab.default_corpus import collection_of

        doc_sources = [collection_of(label) for label in doc_sources]
    splits, counts, split_sources = dedup_and_split(docs, inputs.eff, doc_sources)
    del docs, doc_sources
    kept = sum(len(v) for v in splits.values())
    if kept == 0:
        raise CorpusError(
            f"{cfg.url}: no documents left ({counts['documents_read']} read, "
            f"{counts['duplicates_dropped']} duplicates, {counts['empty_dropped']} empty); the corpus "
            "needs at least a few non-empty documents"
        )
    for name in SPLITS:
        if not splits[name]:
            raise CorpusError(
                f"{cfg.url}: the {name} split is empty: {kept} unique documents split by hash with "
                f"test_fraction={cfg.test_fraction} and probe_fraction={cfg.probe_fraction} leave none for {name}; "
                "add documents (or use corpus.split_on_blank_lines for one document per paragraph), raise the "
                "fraction, or change corpus.split_salt"
            )
    return splits, counts, split_sources, formats


def _write_ood(cfg: CorpusConfig, inputs: Inputs, tok: Any, dtype: np.dtype, files: layout.Corpus) -> dict:
    """Tokenize and write the out-of-distribution split; its manifest entry."""
    ood_docs, _, _ = _documents(
        inputs.ood_infos or [],
        inputs.ood_held,
        dataclasses.replace(inputs.eff, format="auto", source_field=None),
        "auto",
    )
    ood_docs = [d for d in ood_docs if normalize(d)]
    if not ood_docs:
        raise CorpusError(f"{cfg.ood_url}: no non-empty documents in the out-of-distribution corpus (corpus.ood_url)")
    arr = tokens_of(tok, ood_docs, dtype)
    sha = _write_array(files.split("ood"), arr)
    return {
        "documents": len(ood_docs),
        "tokens": int(arr.size),
        "bytes": int(arr.nbytes),
        "file": files.split_file("ood"),
        "sha256": sha,
    }


def prepare_corpus(cfg: CorpusConfig, root: str) -> dict:
    """Read, deduplicate, split and tokenize the corpus into {root}/corpora/{corpus_id}/; returns the manifest."""
    t0 = time.perf_counter()
    inputs = resolve_inputs(cfg)
    eff, infos, ood_infos, corpus_id = inputs.eff, inputs.infos, inputs.ood_infos, inputs.corpus_id
    out = corpus_url(root, corpus_id)
    files = layout.Corpus(out)
    storage.sweep_stale_temporaries(out)  # shards half-written by a killed prepare
    manifest_url = files.manifest
    if storage.exists(manifest_url):
        manifest = storage.read_json(manifest_url)
        if isinstance(manifest, dict) and manifest.get("corpus_id") == corpus_id:
            log.info(f"corpus {corpus_id}: reusing the prepared corpus at {out} (same inputs and settings)")
            return manifest

    splits, counts, split_sources, formats = _split_documents(cfg, inputs)
    t_read = time.perf_counter()

    if eff.tokenizer == "byte":
        tok: ByteTokenizer | BPETokenizer = ByteTokenizer()
    else:
        log.info(f"training a BPE tokenizer (vocab {eff.vocab_size}) on {len(splits['train'])} train documents")
        tok = BPETokenizer.train(splits["train"], eff.vocab_size)
    dtype = token_dtype(tok.vocab_size)

    split_info: dict[str, dict] = {}
    lengths: dict[str, np.ndarray] = {}
    for name in logs.progress(SPLITS, desc="tokenize splits", unit="split"):
        doc_lengths: list[int] = []
        arr = tokens_of(tok, splits[name], dtype, lengths=doc_lengths)
        lengths[name] = np.asarray(doc_lengths, dtype=np.int64)
        sha = _write_array(files.split(name), arr)
        split_info[name] = {
            "documents": len(splits[name]),
            "tokens": int(arr.size),
            "bytes": int(arr.nbytes),
            "file": files.split_file(name),
            "sha256": sha,
            "largest_document_tokens": int(lengths[name].max()) if len(lengths[name]) else 0,
        }
        del arr
    composition = split_composition(split_sources, lengths)
    split_warning_list = split_warnings(lengths, eff.chunk_tokens or 0)
    for message in split_warning_list:
        log.warning("%s", message)
    if ood_infos is not None:
        split_info["ood"] = _write_ood(cfg, inputs, tok, dtype, files)
    if isinstance(tok, BPETokenizer):
        tok.save(files.tokenizer)
    storage.write_json(files.config, dataclasses.asdict(cfg))

    source: dict[str, Any] = {
        "url": cfg.url,
        "format": formats[0] if len(set(formats)) == 1 else "mixed",
        "files": infos,
    }
    if ood_infos is not None:
        source["ood_url"] = cfg.ood_url
        source["ood_files"] = ood_infos
    manifest = {
        "corpus_id": corpus_id,
        "format_version": FORMAT_VERSION,
        "source": source,
        "tokenizer": tok.to_manifest(),
        "dtype": dtype.name,
        **counts,
        "chunk_tokens": eff.chunk_tokens or 0,
        "splits": split_info,
        "composition": composition,
        "warnings": split_warning_list,
        "config": dataclasses.asdict(cfg),
        "created_by": f"repeatlab {__version__}",
    }
    storage.write_json(manifest_url, manifest)  # last: the corpus exists once this file does
    dt = time.perf_counter() - t0
    log.info(f"corpus {corpus_id}: prepared at {out} in {dt:.1f} s (read, dedup and split {t_read - t0:.1f} s)")
    return manifest


# ----------------------------------------------------------------------------------------------------------------------
# Reading a prepared corpus


def load_manifest(corpus_url: str) -> dict:
    url = layout.Corpus(corpus_url).manifest
    if not storage.exists(url):
        raise CorpusError(
            f"{url}: not found: this corpus was never prepared (or its prepare was interrupted); "
            "run `repeatlab prepare`"
        )
    manifest = storage.read_json(url)
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise CorpusError(
            f"{url}: format_version {manifest.get('format_version') if isinstance(manifest, dict) else None!r} "
            f"is not allowed: this repeatlab reads corpus format {FORMAT_VERSION}; prepare it again"
        )
    return manifest


def open_split(corpus_url: str, split: str, manifest: dict) -> np.ndarray:
    """Read-only memory map of a split's token shard (remote shards are cached locally first)."""
    info = manifest.get("splits", {}).get(split)
    if info is None:
        raise CorpusError(
            f"{layout.Corpus(corpus_url).manifest}: no split {split!r}; allowed: "
            f"{', '.join(manifest.get('splits', {}))}"
        )
    url = storage.join(corpus_url, info["file"])
    path = storage.cached_local_copy(url)
    dtype = np.dtype(manifest["dtype"])
    import os

    nbytes = os.path.getsize(path)
    if nbytes != info["bytes"] or nbytes % dtype.itemsize:
        raise CorpusError(
            f"{url}: {nbytes} bytes on disk, the manifest says {info['bytes']}: the shard is "
            "truncated or from another prepare; prepare the corpus again"
        )
    from repeatlab.integrity import verify_shard

    verify_shard(corpus_url, info, path)  # once per process and file
    if nbytes == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def summary(manifest: dict, url: str) -> str:
    s = manifest["splits"]
    tok = manifest["tokenizer"]
    parts = ", ".join(f"{name} {s[name]['documents']:,} docs / {s[name]['tokens']:,} tokens" for name in s)
    return _summary_head(manifest, tok, parts) + composition_text(manifest)


def composition_text(manifest: dict) -> str:
    """' Composition: train Bible 41% / ...; test ...' from a manifest (empty for manifests without one)."""
    comp = manifest.get("composition") or {}
    if not comp:
        return ""
    rows = [
        f"{name} " + " / ".join(f"{src} {row['share']:.0%}" for src, row in per.items()) for name, per in comp.items()
    ]
    return " Composition (share of tokens): " + "; ".join(rows) + "."


def _summary_head(manifest: dict, tok: dict, parts: str) -> str:
    return (
        f"Corpus {manifest['corpus_id']} from {manifest['source']['url']} ({len(manifest['source']['files'])} "
        f"file(s), {manifest['source']['format']}): {manifest['documents_read']:,} documents read, "
        f"{manifest['duplicates_dropped']:,} exact duplicates and {manifest['empty_dropped']:,} empty dropped; "
        f"{tok['kind']} tokenizer, vocab {tok['vocab_size']:,}, {manifest['dtype']} shards; {parts}."
    )
