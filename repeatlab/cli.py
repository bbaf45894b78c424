"""The `repeatlab` command: one thin layer over the library's step functions.

Every subcommand's arguments are defined here (argparse subparsers with shared parents); each handler parses, calls
one library function and prints its result on stdout. Progress and diagnostics are log lines on stderr
(repeatlab.logs: human lines, or JSON lines with --log-format json). Heavy modules are imported only when their
command runs, so `repeatlab --help` stays fast and a laptop without kfp-kubernetes or gcsfs can still prepare and
train. Expected failures (RepeatlabError) print one line and exit 2.

`family`, `submit` and `schedule` still parse their own arguments (their modules' `cli`), until those modules move
their flags here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from repeatlab import logs

Handler = Callable[[argparse.Namespace], int]

# The commands whose arguments are defined here, in the order `repeatlab --help` lists them.
COMMANDS = (
    "family",
    "prepare",
    "mix",
    "grid",
    "train",
    "evaluate",
    "analyze",
    "danger",
    "audit",
    "report",
    "archive",
    "run",
    "compile",
    "submit",
    "schedule",
)
# Commands whose arguments their own module still parses: name -> (module, function, one-line help).
DELEGATED: dict[str, tuple[str, str, str]] = {}


def _dump(data: Any) -> None:
    from repeatlab import storage

    print(json.dumps(data, indent=2, sort_keys=True, default=storage._json_default))


def _load_config(path: str) -> Any:
    """The study config at `path`, validated, with its storage options applied."""
    from repeatlab import config as config_lib
    from repeatlab import storage

    cfg = config_lib.load(path)
    storage.configure(cfg.storage.options, anonymous=cfg.storage.anonymous)
    return cfg


# ----------------------------------------------------------------------------------------------------------------------
# Shared argument groups (parents)


def _parent(build: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    build(parent)
    return parent


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="study YAML (gives the storage root and the study name)")
    p.add_argument("--root", help="storage root (overrides the config's storage.root; with --study instead of it)")
    p.add_argument("--study", help="study name (with --root)")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="study YAML")


def _run_url_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-url", required=True, help="run folder holding point.json ({root}/runs/{point_id})")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _log_args(p: argparse.ArgumentParser, default: Any = None) -> None:
    p.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=default,
        help=f"log lines on stderr: human (default) or json (also ${logs.FORMAT_ENV})",
    )
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="also log debug lines")


STUDY, CONFIG, RUN_URL, JSON = (_parent(_study_args), _parent(_config_arg), _parent(_run_url_arg), _parent(_json_arg))
LOGGING = _parent(lambda p: _log_args(p, default=argparse.SUPPRESS))  # after the command too, without clobbering


def resolve_study(args: argparse.Namespace) -> tuple[str, str]:
    """(root, study) from --config (and --root) or --root and --study."""
    from repeatlab.errors import AnalysisError

    if args.config:
        cfg = _load_config(args.config)
        return args.root or cfg.storage.root, cfg.name
    if not (args.root and args.study):
        raise AnalysisError("give --config study.yaml, or both --root and --study")
    return args.root, args.study


# ----------------------------------------------------------------------------------------------------------------------
# Handlers: parse -> one library call -> print


def cmd_prepare(args: argparse.Namespace) -> int:
    import dataclasses

    from repeatlab.config import CorpusConfig
    from repeatlab.corpus import corpus_url, prepare_corpus, summary

    if args.config:
        study = _load_config(args.config)
        cfg, root = study.corpus, args.root or study.storage.root
    else:
        cfg, root = CorpusConfig(), args.root or "file://./.repeatlab"
    overrides = {
        "url": args.url,
        "format": args.format,
        "text_field": args.text_field,
        "split_on_blank_lines": args.split_on_blank_lines,
        "tokenizer": args.tokenizer,
        "vocab_size": args.vocab_size,
        "ood_url": args.ood_url,
        "chunk_tokens": args.chunk_tokens,
        "source_field": args.source_field,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.vocab_size is None and args.tokenizer:  # a tokenizer switch brings its own default vocabulary
        overrides["vocab_size"] = (
            256 if args.tokenizer == "byte" else (8192 if cfg.vocab_size == 256 else cfg.vocab_size)
        )
    manifest = prepare_corpus(dataclasses.replace(cfg, **overrides), root)
    if args.json:
        _dump(manifest)
    else:
        url = corpus_url(root, manifest["corpus_id"])
        print(summary(manifest, url))
        print(url)
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    from repeatlab.mix import mix_run

    info = mix_run(args.run_url)  # logs the plan's summary once
    if args.json:
        _dump(info)
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    """A listing: reads the corpus inputs to compute their id, writes nothing (--write plans the grid)."""
    from repeatlab import grid
    from repeatlab.corpus import corpus_url, identify, prepare_corpus

    cfg = _load_config(args.config)
    corpus_id, manifest = identify(cfg.corpus, cfg.storage.root)
    if args.write:
        manifest = manifest or prepare_corpus(cfg.corpus, cfg.storage.root)
        points = grid.plan_grid(cfg, manifest, corpus_url(cfg.storage.root, corpus_id))
    else:
        vocab = manifest["tokenizer"]["vocab_size"] if manifest else cfg.corpus.vocab_size
        if manifest is None and cfg.corpus.tokenizer == "bpe":
            _warn(f"grid: corpus {corpus_id} is not prepared yet: ids assume a BPE vocabulary of exactly {vocab}")
        points = grid.grid_points(cfg, corpus_id, corpus_url(cfg.storage.root, corpus_id), vocab)
        for warning in grid.check_points(points):
            _warn(f"grid: {warning}")
    if args.json:
        _dump(points)
    else:
        from repeatlab.packs import describe_packs, effective_pack_size

        for point in points:
            print(grid.describe(point))
        packs = grid.study_packs(cfg, points)
        for line in describe_packs(packs, points):
            print(line)
        print(f"{len(points)} points in {len(packs)} packs of at most {effective_pack_size(cfg.train)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from repeatlab import steps

    if len(args.run_url) > 1:
        results = steps.train_pack(args.run_url, nproc_per_node=args.nproc_per_node, evaluate=args.evaluate)
        if args.json:
            _dump(results)
        return 0
    result = steps.train(
        args.run_url[0],
        nproc_per_node=args.nproc_per_node,
        nnodes=args.nnodes,
        evaluate=args.evaluate,
        max_steps=args.max_steps,
    )
    if args.json:
        _dump(result)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from repeatlab.evaluate import evaluate_run, headline

    record = evaluate_run(args.run_url, step=args.checkpoint, device=args.device)
    if logs.rank() in (None, 0):  # under torchrun: rank 0 prints the result once
        import os

        print(json.dumps({**headline(record), "world_size": int(os.environ.get("WORLD_SIZE", "1"))}))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from repeatlab import layout
    from repeatlab.analyze import run_analysis

    root, study = resolve_study(args)
    analysis = run_analysis(root, study)
    if args.json:
        _dump(analysis)
        return 0
    for line in analysis["findings"]:
        print(line)
    for w in analysis["warnings"]:
        _warn(w["message"])
    print(f"wrote {layout.Study(layout.study_url(root, study)).analysis}")
    return 0


def cmd_danger(args: argparse.Namespace) -> int:
    from repeatlab.danger import _check_inputs, assess, load_analysis

    _check_inputs(args.params, args.fraction, args.epochs)
    result = assess(args.params, args.fraction, args.epochs, load_analysis(args.study, args.config))
    if args.json:
        _dump(result)
        return 0
    print(result["answer"])
    for line in ([result["fraction_note"]] if result["fraction_note"] else []) + result["notes"]:
        print(f"  note: {line}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from repeatlab import audit, layout, storage
    from repeatlab.audit_report import write_audit_report
    from repeatlab.config import CorpusConfig
    from repeatlab.errors import ConfigError

    settings = audit.settings_from_args(args)
    settings.check()
    cfg = CorpusConfig(
        url=args.corpus, format=args.format, text_field=args.text_field, split_on_blank_lines=args.split_on_blank_lines
    )
    if args.write_deduplicated and args.remove == "flagged" and args.params is None:
        raise ConfigError(
            "--remove flagged needs --params (which buckets are flagged depends on N); give --params "
            "or use --remove all"
        )
    result, scanned = audit.run_audit(
        args.corpus,
        settings,
        args.params,
        args.study,
        audit._number("--passes", args.passes),
        cfg,
        args.tokenizer,
        args.strict_range,
    )
    if args.write_deduplicated:
        result["deduplicated"] = audit.write_deduplicated(
            result, scanned, args.write_deduplicated, args.remove, cfg, args.tokenizer
        )
    out = args.out or storage.join(layout.audits_url("file://./.repeatlab"), result["audit_id"])
    paths = write_audit_report(result, out)
    if args.json:
        _dump(result)
        return 0
    for line in audit.headline(result):
        print(line)
    if result.get("deduplicated"):
        d = result["deduplicated"]
        print(
            f"wrote {d['url']}: {d['documents_out']:,} of {d['documents_in']:,} documents kept "
            f"({d['documents_dropped']:,} duplicates dropped, {d['spans_cut']:,} repeated spans cut, "
            f"{d['documents_emptied']:,} emptied); {d['bytes_out']:,} of {d['bytes_in']:,} bytes"
        )
    print(f"wrote {paths['audit.json']}, {paths['index.html']}, {paths['report.md']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from repeatlab import layout, steps, storage
    from repeatlab.analyze import analyze_study, corpus_manifests, load_records
    from repeatlab.report import answer_lines, write_report

    root, study = resolve_study(args)
    folder = layout.Study(layout.study_url(root, study))
    records, _ = load_records(root, study)
    if storage.exists(folder.analysis) and not args.reanalyze:
        analysis = storage.read_json(folder.analysis)
    else:
        analysis = analyze_study(
            records, storage.read_json(folder.points), study=study, corpora=corpus_manifests(root, records)
        )
        storage.write_json(folder.analysis, analysis)
    paths = write_report(analysis, records, args.out or folder.report, steps.report_title(study))
    for line in answer_lines(analysis):  # the report's first screen
        print(f"- {line}")
    print(f"wrote {paths['index.html']}, {paths['report.md']}, {paths['results.csv']}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from repeatlab.archive import archive_study

    root, study = resolve_study(args)
    result = archive_study(root, study, args.out)
    _info(
        f"archived {study}: {result['files']} files, {result['evaluated']} of {result['points']} points evaluated "
        f"-> {result['out']}"
    )
    return 0


def cmd_family(args: argparse.Namespace) -> int:
    from repeatlab import model
    from repeatlab.config import FamilyConfig

    defaults = FamilyConfig()
    for name in ("aspect_ratio", "head_dim", "mlp_ratio"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(defaults, name))
    for flag, value, low, high in (
        ("--aspect-ratio", args.aspect_ratio, 1, None),
        ("--head-dim", args.head_dim, 1, None),
        ("--mlp-ratio", args.mlp_ratio, 1, None),
        ("--vocab-size", args.vocab_size, 2, model.MAX_VOCAB),
        ("--context", args.context, 1, model.MAX_CONTEXT),
        ("--max-depth", args.max_depth, 1, model.MAX_FAMILY_DEPTH),
    ):
        model._require_int(value, flag, low, high)
    family = FamilyConfig(aspect_ratio=args.aspect_ratio, head_dim=args.head_dim, mlp_ratio=args.mlp_ratio)
    rows = model.list_family(family, args.vocab_size, args.context, args.max_depth, args.attention_only)
    if args.json:
        _dump(rows)
        return 0
    header = ("name", "layers", "width", "heads", "N non-embedding", "N total", "FLOPs/token")
    table = [header] + [
        (
            r["name"],
            str(r["n_layer"]),
            str(r["n_embd"]),
            str(r["n_head"]),
            f"{r['n_params_nonembed']:,}",
            f"{r['n_params_total']:,}",
            f"{r['flops_per_token']:.3e}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    print(
        f"\nvocab {args.vocab_size}, context {args.context}, aspect ratio {family.aspect_ratio}, head dim "
        f"{family.head_dim}, mlp ratio {family.mlp_ratio}; N non-embedding excludes wte and wpe (Kaplan), N total "
        "counts the tied embedding once; FLOPs/token = 6N + 6 * layers * context * width (training)"
    )
    return 0


def _add_family(sub: Any) -> None:
    p = sub.add_parser(
        "family",
        parents=[JSON, LOGGING],
        help="list the model family with non-embedding parameter counts",
        description="List the model family (width = depth x aspect ratio, whole heads) with non-embedding and "
        "total parameter counts and training FLOPs per token.",
    )
    p.add_argument("--aspect-ratio", type=int, help="width per layer of depth (default: the study config's)")
    p.add_argument("--head-dim", type=int, help="width of one attention head (default: the study config's)")
    p.add_argument("--mlp-ratio", type=int, help="MLP width / model width (default: the study config's)")
    p.add_argument("--vocab-size", type=int, default=256, help="vocabulary (256: byte tokens)")
    p.add_argument("--context", type=int, default=128, help="context length in tokens")
    p.add_argument("--max-depth", type=int, default=24, help="list depths 1..max-depth")
    p.add_argument("--attention-only", action="store_true", help="blocks without MLP")
    p.set_defaults(handler=cmd_family)


def cmd_run(args: argparse.Namespace) -> int:
    """Local by default: through the KFP local runner; with --host, submitted to that KFP API."""
    import dataclasses

    cfg = _load_config(args.config)
    if args.root:
        cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=args.root))
    if args.host:
        from repeatlab.config import check_for_cluster
        from repeatlab.kfp_client import submit

        _dump(submit(check_for_cluster(cfg), args.host, fan_in=args.fan_in))
        return 0
    from repeatlab.runner import run_local

    # --verbose also shows every task's KFP output (always kept in <pipeline root>/logs/)
    result = run_local(cfg, pipeline_root=args.pipeline_root, verbose=bool(args.verbose), fan_in=args.fan_in)
    print(f"study {cfg.name} finished in {result['seconds']:.0f} s")
    for line in result["answer"]:
        print(f"- {line}")
    print(f"report: {result['report']}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    """To stdout, or to --output; the checked-in golden file is written only by `make compile`."""
    import os
    import tempfile

    from repeatlab.kfp_pipeline import compile_pipeline

    cfg = _load_config(args.config) if args.config else None
    if args.output:
        print(compile_pipeline(args.output, cfg, kubernetes_manifest=args.kubernetes_manifest, fan_in=args.fan_in))
        return 0
    with tempfile.TemporaryDirectory(prefix="repeatlab-compile-") as folder:
        path = compile_pipeline(
            os.path.join(folder, "pipeline.yaml"),
            cfg,
            kubernetes_manifest=args.kubernetes_manifest,
            fan_in=args.fan_in,
        )
        with open(path, encoding="utf-8") as fh:
            sys.stdout.write(fh.read())
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# The parser


def _info(message: str) -> None:
    import logging

    logging.getLogger("repeatlab.cli").info(message)


def _warn(message: str) -> None:
    import logging

    logging.getLogger("repeatlab.cli").warning(message)


def _audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, help="corpus file, folder, glob or fsspec URL, or 'default'")
    p.add_argument("--params", help="non-embedding parameters N of the model to train (e.g. 1e9)")
    p.add_argument("--study", help="analysis.json URL or study YAML of a fitted study; default: the paper's region")
    p.add_argument("--passes", default="1", help="passes over the corpus in training (multiplies E; default 1)")
    p.add_argument("--format", default="auto", choices=["auto", "text", "jsonl", "parquet"])
    p.add_argument("--text-field", default="text")
    p.add_argument("--split-on-blank-lines", action="store_true")
    p.add_argument("--tokenizer", default="byte", help="'byte' (default) or a tokenizer.json URL")
    p.add_argument("--min-span", default="50", help="shortest repeated span counted, in tokens (default 50)")
    p.add_argument("--ngram", default="5", help="word n-gram shingles for near-duplicates (default 5)")
    p.add_argument("--threshold", default="0.8", help="Jaccard threshold for near-duplicates (default 0.8)")
    p.add_argument("--num-perm", default="128", help="MinHash values per document (default 128)")
    p.add_argument("--shard-tokens", default=str(2 << 20), help="tokens per suffix-array shard (default 2097152)")
    p.add_argument("--max-memory", default=str(4 << 30), help="bytes for signatures and one shard (default 4 GiB)")
    p.add_argument("--out", help="folder for audit.json and the report (default file://./.repeatlab/audits/ID)")
    p.add_argument(
        "--write-deduplicated",
        metavar="URL",
        help="write the corpus without the flagged repetition (.jsonl, .jsonl.gz or .jsonl.zst)",
    )
    p.add_argument(
        "--remove",
        default="flagged",
        choices=["flagged", "all"],
        help="what --write-deduplicated removes: the flagged buckets (default) or all repetition",
    )
    p.add_argument("--strict-range", action="store_true", help="fail instead of reporting an extrapolated reading")
    p.add_argument("--json", action="store_true", help="print audit.json instead of the summary")


def _add_prepare(sub: Any) -> None:
    p = sub.add_parser(
        "prepare",
        parents=[LOGGING],
        help="read, deduplicate, split and tokenize a corpus into shards",
        description="Read, deduplicate, split and tokenize a corpus into token shards under "
        "{root}/corpora/{corpus_id}/ (reused when already prepared).",
    )
    p.add_argument("--config", help="study YAML: uses its corpus and storage sections")
    p.add_argument("--url", help="corpus file, folder, glob or fsspec URL, or 'default'")
    p.add_argument("--format", choices=["auto", "text", "jsonl", "parquet"])
    p.add_argument("--text-field")
    p.add_argument("--split-on-blank-lines", action="store_true", default=None)
    p.add_argument("--tokenizer", choices=["byte", "bpe"])
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary (default 8192 with --tokenizer bpe); byte: 256")
    p.add_argument("--ood-url")
    p.add_argument(
        "--chunk-tokens",
        type=int,
        help="cut documents into pieces of about this many byte tokens "
        "before the split (0: off; default: automatic, on for the default corpus)",
    )
    p.add_argument("--source-field", help="JSONL key / Parquet column naming each document's source")
    p.add_argument("--root", help="storage root (default: the config's storage.root, else file://./.repeatlab)")
    _json_arg(p)
    p.set_defaults(handler=cmd_prepare)


def _add_steps(sub: Any) -> None:
    p = sub.add_parser(
        "mix",
        parents=[RUN_URL, JSON, LOGGING],
        help="build the exact mixture plan of one grid point",
        description="Build the exact mixture plan (plan.npy, repeated.npy, plan.json) of the point "
        "in --run-url; a complete plan is reused.",
    )
    p.set_defaults(handler=cmd_mix)
    p = sub.add_parser(
        "grid",
        parents=[CONFIG, JSON, LOGGING],
        help="list a study's grid points and their ids",
        description="List a study's grid points with their content-addressed ids. Writes nothing unless --write.",
    )
    p.add_argument(
        "--write",
        action="store_true",
        help="prepare the corpus if needed and write point.json, execution.json and points.json",
    )
    p.set_defaults(handler=cmd_grid)
    p = sub.add_parser(
        "train",
        parents=[JSON, LOGGING],
        help="train one grid point under torchrun",
        description="Train one grid point: torchrun with an explicit --nproc-per-node, resuming "
        "from the last checkpoint; a trained point is skipped. The same step the "
        "pipeline runs.",
    )
    p.add_argument(
        "--nproc-per-node",
        type=int,
        default=None,
        help="processes per node (default: the run's execution.json, else 1)",
    )
    p.add_argument(
        "--run-url",
        required=True,
        nargs="+",
        action="extend",
        help="the run folder ({root}/runs/{point_id}); several: train them as one pack (one batched program)",
    )
    p.add_argument("--nnodes", type=int, default=None, help="nodes (default: the run's execution.json, else 1)")
    p.add_argument(
        "--no-evaluate",
        dest="evaluate",
        action="store_false",
        help="do not evaluate the final checkpoint in the training processes (the pipeline does)",
    )
    p.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_train)
    p = sub.add_parser(
        "evaluate",
        parents=[RUN_URL, LOGGING],
        help="evaluate a trained point -> eval.json",
        description="Evaluate a trained point: losses, copying, ICL and per-head scores -> eval.json.",
    )
    p.add_argument(
        "--checkpoint",
        type=int,
        default=None,
        metavar="STEP",
        help="evaluate the checkpoint at this step (default: the latest complete one)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.set_defaults(handler=cmd_evaluate)


def _add_results(sub: Any) -> None:
    p = sub.add_parser(
        "analyze",
        parents=[STUDY, JSON, LOGGING],
        help="fit the study -> analysis.json",
        description="Fit the baselines, effective sizes, worst E and the poor-performance region "
        "from the study's eval records; writes analysis.json.",
    )
    p.set_defaults(handler=cmd_analyze)
    p = sub.add_parser(
        "danger",
        parents=[JSON, LOGGING],
        help="is repeating this data E times dangerous at N?",
        description="Is repeating a fraction f of the data E times dangerous for a model of N "
        "non-embedding parameters? From a study's region, else the paper's.",
    )
    p.add_argument("--params", required=True, help="non-embedding parameters N (e.g. 1e9)")
    p.add_argument("--fraction", required=True, help="fraction f of the tokens that are repeats, in [0, 1)")
    p.add_argument("--epochs", required=True, help="how many times the repeated subset is seen, E >= 1")
    p.add_argument("--study", help="URL of a study's analysis.json")
    p.add_argument("--config", help="study YAML (reads {root}/studies/{name}/analysis.json)")
    p.set_defaults(handler=cmd_danger)
    p = sub.add_parser(
        "audit",
        parents=[LOGGING],
        help="how much of a corpus is repeated, on the damage map",
        description="How much of a corpus is repeated how often, placed on the damage map.",
    )
    _audit_args(p)
    p.set_defaults(handler=cmd_audit)
    p = sub.add_parser(
        "report",
        parents=[STUDY, LOGGING],
        help="write the study report (HTML, Markdown, CSV)",
        description="Write the study report (HTML, Markdown, CSV) from analysis.json.",
    )
    p.add_argument("--out", help="output folder (default {root}/studies/{study}/report)")
    p.add_argument("--reanalyze", action="store_true", help="recompute the analysis even if analysis.json exists")
    p.set_defaults(handler=cmd_report)
    p = sub.add_parser(
        "archive",
        parents=[STUDY, LOGGING],
        help="copy a study's records to keep them",
        description="Copy a study's records (no checkpoints, no figures) to a folder or bucket.",
    )
    p.add_argument("--out", required=True, help="destination root (a folder or an fsspec URL)")
    p.set_defaults(handler=cmd_archive)


def _add_pipeline(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        parents=[CONFIG, LOGGING],
        help="run a whole study (locally unless --host)",
        description="Run a whole study: through the KFP local runner on this machine, or, with "
        "--host, submitted to that Kubeflow Pipelines API.",
    )
    p.add_argument("--local", action="store_true", help="run on this machine (the default without --host)")
    p.add_argument("--host", help="a Kubeflow Pipelines API to submit to instead (as `repeatlab submit`)")
    p.add_argument("--root", default=None, help="override storage.root (file://, s3://, gs://)")
    p.add_argument("--pipeline-root", default=None, help="local folder for KFP's step artifacts")
    _fan_in_arg(p)
    # -v/--verbose (from LOGGING) also shows every task's KFP output; it is always in <pipeline root>/logs/
    p.set_defaults(handler=cmd_run)
    p = sub.add_parser(
        "compile",
        parents=[LOGGING],
        help="compile the pipeline to YAML (stdout or --output)",
        description="Compile the pipeline to YAML, on stdout unless --output is given (the "
        "checked-in pipelines/repetition_grid.yaml is written by `make compile`).",
    )
    p.add_argument("--config", default=None, help="study YAML (default: pipelines/configs/paper-small-kubeflow.yaml)")
    p.add_argument("--output", default=None, help="write the YAML here instead of stdout")
    p.add_argument(
        "--kubernetes-manifest",
        action="store_true",
        help="emit Kubernetes-native Pipeline and PipelineVersion resources instead of the IR YAML",
    )
    _fan_in_arg(p)
    p.set_defaults(handler=cmd_compile)


def _fan_in_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fan-in",
        choices=("collected", "storage"),
        default="collected",
        help="how analyze gets the loop's evaluations: 'collected' (dsl.Collected, connected lineage; KFP backends "
        ">= 2.14) or 'storage' (after the loop, from storage; backends 2.4.1-2.13)",
    )


def _kfp_args(p: argparse.ArgumentParser) -> None:
    from repeatlab import kfp_client as k

    p.add_argument(
        "--host",
        default=os.environ.get(k.HOST_ENV),
        help=f"KFP API URL, e.g. http://ml-pipeline.kubeflow:8888 (default: ${k.HOST_ENV})",
    )
    p.add_argument("--config", required=True, help="study YAML (any storage URL)")
    p.add_argument(
        "--token-file",
        default=None,
        help=f"file holding a bearer token (default: {k.SA_TOKEN_PATH} when it exists, else none)",
    )
    p.add_argument("--experiment", default=None, help="experiment name (default: the study name)")
    p.add_argument(
        "--namespace",
        default=os.environ.get(k.NAMESPACE_ENV) or None,
        help=f"KFP user namespace in multi-user mode (default: ${k.NAMESPACE_ENV})",
    )
    p.add_argument("--service-account", default=None, help="Kubernetes service account the run's pods use")
    p.add_argument("--package", default=None, help="a compiled pipeline package (default: compile it now)")
    _fan_in_arg(p)
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        help=f"seconds the whole command may take (default: $REPEATLAB_KFP_DEADLINE_S or {k.DEADLINE_S:.0f})",
    )


def _kfp_common(args: argparse.Namespace) -> dict[str, Any]:
    """The host, study and token of a submit/schedule, and the options they share."""
    from repeatlab import config as config_lib
    from repeatlab import kfp_client

    host = kfp_client.normalize_host(args.host)
    cfg = config_lib.load(args.config)
    return {
        "cfg": cfg,
        "host": host,
        "token": kfp_client.read_token(args.token_file),
        "experiment": args.experiment,
        "package_path": args.package,
        "namespace": args.namespace,
        "service_account": args.service_account,
        "deadline_s": args.deadline,
        "fan_in": args.fan_in,
    }


def _print_version(out: dict[str, Any]) -> None:
    print(
        f"pipeline: {out['pipeline']} ({out['pipeline_id']}), version {out['version']} ({out['version_id']}, "
        + ("reused)" if out["reused"] else "uploaded)")
    )


def cmd_submit(args: argparse.Namespace) -> int:
    from repeatlab import kfp_client

    out = kfp_client.submit(run_name=args.run_name, **_kfp_common(args))
    print(f"run_id: {out['run_id']}")
    print(f"run_name: {out['run_name']}")
    print(f"experiment: {out['experiment']} ({out['experiment_id']})")
    _print_version(out)
    print(f"url: {out['url']}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from repeatlab import kfp_client

    cron = kfp_client.validate_cron(args.cron)  # before loading anything: the commonest mistake
    out = kfp_client.schedule(
        cron=cron,
        job_name=args.job_name,
        max_concurrency=args.max_concurrency,
        no_catchup=not args.catchup,
        **_kfp_common(args),
    )
    print(f"recurring_run_id: {out['recurring_run_id']}")
    print(f"job_name: {out['job_name']}")
    print(f"cron: {out['cron']}")
    print(f"experiment: {out['experiment']} ({out['experiment_id']})")
    _print_version(out)
    print(f"url: {out['url']}")
    return 0


def _add_kfp(sub: Any) -> None:
    p = sub.add_parser(
        "submit",
        parents=[LOGGING],
        help="submit a study to a Kubeflow Pipelines API",
        description="Submit a study to a Kubeflow Pipelines API: its pipeline version (uploaded when "
        "new), run in the experiment named after the study.",
    )
    _kfp_args(p)
    p.add_argument("--run-name", default=None, help="run name (default: <study>-<UTC timestamp>)")
    p.set_defaults(handler=cmd_submit)
    p = sub.add_parser(
        "schedule",
        parents=[LOGGING],
        help="create a recurring run of a study on a Kubeflow Pipelines API",
        description="Create a recurring run of a study's pipeline version.",
    )
    _kfp_args(p)
    p.add_argument("--cron", required=True, help="KFP cron, 6 fields with seconds first, e.g. '0 0 3 * * *'")
    p.add_argument("--job-name", default=None, help="recurring run name (default: <study>-scheduled)")
    p.add_argument("--max-concurrency", type=int, default=1, help="runs of this schedule at once (default 1)")
    p.add_argument("--catchup", action="store_true", help="backfill missed intervals (default: only the latest)")
    p.set_defaults(handler=cmd_schedule)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repeatlab",
        description="Measure how repeated training data damages "
        "language models (Hernandez et al. 2022), locally or as a Kubeflow pipeline.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    _log_args(parser)
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    _add_prepare(sub)
    _add_family(sub)
    _add_steps(sub)
    _add_results(sub)
    _add_pipeline(sub)
    _add_kfp(sub)
    for name, (_, _, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)  # listed here; parsed by its module
    return parser


def _delegate(command: str, rest: list[str]) -> int:
    module_name, function, _ = DELEGATED[command]
    return int(getattr(importlib.import_module(module_name), function)(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    from repeatlab.errors import RepeatlabError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] == "help":
        parser.print_help()
        return 0
    names = set(DELEGATED) | set(COMMANDS)
    command = next((a for a in argv if a in names), None)
    try:
        if command in DELEGATED:
            index = argv.index(command)
            top = parser.parse_args(argv[:index])
            logs.setup(top.log_format, "DEBUG" if top.verbose else "INFO")
            return _delegate(command, argv[index + 1 :])
        args = parser.parse_args(argv)
        if args.version:
            from repeatlab import __version__

            print(__version__)
            return 0
        if args.command is None:
            parser.print_help()
            return 2
        logs.setup(args.log_format, "DEBUG" if args.verbose else "INFO")
        return int(args.handler(args) or 0)
    except RepeatlabError as exc:
        print(f"repeatlab {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"repeatlab {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
