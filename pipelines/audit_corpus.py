"""The audit as a fan-out pipeline: plan file groups, map each group in its own pod, reduce from storage.

    audit_plan -> ParallelFor(group): audit_map -> (after the loop) audit_reduce

The map steps write their partial results under work_url (default <out_url>/work) in storage and the reduce step
reads them from there (work_url "" means <out_url>/work; each component resolves it, as KFP cannot join strings at
run time): it depends on the loop by `.after`, not on `dsl.Collected` outputs, which the Kubeflow 1.10
backends do not resolve over a ParallelFor (docs/deploy.md). The result equals the single-step `audit_corpus`
component's audit.json (docs/audit.md, "Fan-out").
"""

import os

from kfp import dsl

from repeatlab.components.audit import audit_map, audit_plan, audit_reduce
from repeatlab.config import StudyConfig
from repeatlab.pipelines.repetition_grid import on_cluster

PIPELINE_NAME = "repeatlab-audit-corpus"
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "audit_corpus.yaml")


def build_audit_pipeline(cfg: StudyConfig | None = None, parallelism: int | None = None):
    """The pipeline function. `cfg`: a study whose `cluster` section (image, storage secret, env, CPU and memory,
    timeout, retries) is compiled into every task, as in the grid pipeline; None under the local runner.
    `parallelism` caps the map pods running at once (default: the study's `cluster.parallelism`, else 8)."""
    parallelism = parallelism or (cfg.cluster.parallelism if cfg else 8)

    def placed(task, heavy: bool = False):
        if cfg is not None:
            on_cluster(task, cfg, cfg.cluster.image, heavy=heavy)
        task.set_caching_options(False)
        return task

    @dsl.pipeline(name=PIPELINE_NAME, description=__doc__.split("\n\n")[0])
    def audit_corpus_fanout(
        corpus_url: str,
        out_url: str,
        work_url: str = "",
        groups: int = 8,
        params: str = "",
        study: str = "",
        write_deduplicated: str = "",
        remove: str = "flagged",
        options_json: str = "{}",
    ):
        planned = placed(audit_plan(corpus_url=corpus_url, work_url=work_url, out_url=out_url, groups=groups))
        planned.set_display_name("plan file groups")
        with dsl.ParallelFor(planned.outputs["Output"], parallelism=parallelism, name="file-group") as group:
            mapped = placed(
                audit_map(
                    corpus_url=corpus_url, work_url=work_url, out_url=out_url, group=group, options_json=options_json
                ),
                heavy=True,
            )
            mapped.set_display_name("map: one file group")
        reduced = placed(
            audit_reduce(
                corpus_url=corpus_url,
                out_url=out_url,
                work_url=work_url,
                params=params,
                study=study,
                write_deduplicated=write_deduplicated,
                remove=remove,
                options_json=options_json,
            ),
            heavy=True,
        )
        reduced.after(mapped)
        reduced.set_display_name("reduce: the whole corpus's audit")

    return audit_corpus_fanout


def compile_audit_pipeline(package_path: str = GOLDEN, cfg: StudyConfig | None = None) -> str:
    """Compile with the cluster settings of `cfg` (default: the study compiled into the grid pipeline)."""
    from kfp import compiler

    from repeatlab import config as config_lib
    from repeatlab.kfp_pipeline import default_config_path

    cfg = cfg or config_lib.check_for_cluster(config_lib.load(default_config_path()))
    compiler.Compiler().compile(build_audit_pipeline(cfg), package_path=package_path)
    return package_path


if __name__ == "__main__":
    print(compile_audit_pipeline())
