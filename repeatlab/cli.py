"""The `repeatlab` command: one subcommand per step, each implemented by `cli(argv)` in its own module.

Modules are imported only when their subcommand runs, so `repeatlab --help` stays fast and a laptop without
kfp-kubernetes or gcsfs can still prepare and train. Expected failures (RepeatlabError) print one line and exit 2.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("repeatlab.corpus", "read, deduplicate, split and tokenize a corpus into token shards"),
    "mix": ("repeatlab.mix", "build the exact mixture plan of unique and repeated sequences for one grid point"),
    "grid": ("repeatlab.grid", "list a study's grid points with their content-addressed ids"),
    "family": ("repeatlab.model", "list the model family with non-embedding parameter counts"),
    "train": ("repeatlab.launch", "train one grid point (starts torchrun with an explicit --nproc-per-node)"),
    "evaluate": ("repeatlab.evaluate", "evaluate a trained point: losses, copying, ICL and per-head scores"),
    "analyze": ("repeatlab.analyze", "fit the baselines, effective sizes, worst E and the poor-performance region"),
    "danger": ("repeatlab.danger", "is repeating this data E times dangerous for a model of N parameters?"),
    "audit": ("repeatlab.audit", "how much of a corpus is repeated how often, placed on the damage map"),
    "report": ("repeatlab.report", "write the study report (HTML, Markdown, CSV)"),
    "archive": ("repeatlab.archive", "copy a study's results (no checkpoints) to a folder or bucket to keep them"),
    "run": ("repeatlab.runner", "run a whole study (--local: through the KFP local runner)"),
    "compile": ("repeatlab.kfp_pipeline", "compile the pipeline to YAML (and Kubernetes-native resources)"),
    "submit": ("repeatlab.kfp_client", "submit a study to a Kubeflow Pipelines API"),
    "schedule": ("repeatlab.kfp_client", "create a recurring run of a study on a Kubeflow Pipelines API"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: repeatlab <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `repeatlab <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from repeatlab.errors import RepeatlabError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from repeatlab import __version__

        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"repeatlab: error: unknown command {command!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, _ = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
        handler = getattr(module, f"cli_{command}", None) or module.cli
        return int(handler(rest) or 0)
    except RepeatlabError as exc:
        print(f"repeatlab {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"repeatlab {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
