"""Compile the repetition-grid pipeline: KFP IR YAML, or KFP's Kubernetes-native Pipeline/PipelineVersion resources.

The compiled YAML depends on the exact kfp and kfp-kubernetes versions (pinned in pyproject.toml). The checked-in
`pipelines/repetition_grid.yaml` is compiled from `pipelines/configs/paper-small-kubeflow.yaml` (paper-small with the
cluster settings of a standard Kubeflow install: the `s3://mlpipeline/repeatlab` bucket on its object store, the
corpus bundled in the image, one GPU per training pod; written by manifests/sync_studies.py from the minio overlay), so
the default a user sees in the Kubeflow UI runs as it is. It is compared by a test, so every change to the DAG shows in
review: run `make compile` after changing a component or the pipeline.
"""

from __future__ import annotations

import os

from repeatlab import config as config_lib
from repeatlab.config import StudyConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG_NAME = "paper-small-kubeflow.yaml"
DEFAULT_CONFIG = os.path.join(REPO, "pipelines", "configs", DEFAULT_CONFIG_NAME)
GOLDEN = os.path.join(REPO, "pipelines", "repetition_grid.yaml")


def default_config_path() -> str:
    """The study compiled into the checked-in pipeline (the installed copy when not in a checkout)."""
    if os.path.exists(DEFAULT_CONFIG):
        return DEFAULT_CONFIG
    import repeatlab.pipelines

    return os.path.join(os.path.dirname(repeatlab.pipelines.__file__), "configs", DEFAULT_CONFIG_NAME)


def compile_pipeline(
    package_path: str,
    cfg: StudyConfig | None = None,
    *,
    kubernetes_manifest: bool = False,
    pipeline_display_name: str | None = None,
    fan_in: str = "collected",
) -> str:
    """Compile the pipeline for a study (default: paper-small) to `package_path`; returns the path.

    fan_in: "collected" (KFP backends >= 2.14) or "storage" (2.4.1 to 2.13); see pipelines/repetition_grid.py."""
    from kfp import compiler

    from repeatlab.pipelines.repetition_grid import build_pipeline

    cfg = cfg or config_lib.check_for_cluster(config_lib.load(default_config_path()))
    pipeline = build_pipeline(cfg, fan_in=fan_in)
    kwargs = {}
    if kubernetes_manifest:
        from kfp.compiler.compiler_utils import KubernetesManifestOptions

        kwargs = {
            "kubernetes_manifest_format": True,
            "kubernetes_manifest_options": KubernetesManifestOptions(
                pipeline_name=f"repeatlab-{cfg.name}",
                pipeline_display_name=pipeline_display_name or f"repeatlab {cfg.name}",
                pipeline_version_name=f"repeatlab-{cfg.name}-v1",
                namespace="repeatlab",
                include_pipeline_manifest=True,
            ),
        }
    os.makedirs(os.path.dirname(os.path.abspath(package_path)), exist_ok=True)
    compiler.Compiler().compile(
        pipeline,
        package_path=package_path,
        pipeline_display_name=pipeline_display_name or f"repeatlab {cfg.name}",
        **kwargs,
    )
    return package_path
