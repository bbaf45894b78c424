from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def analyze(
    study_config: str,
    points: Input[Dataset],
    evaluations: Input[List[Artifact]],
    analysis: Output[Artifact],
    metrics: Output[Metrics],
):
    """Fit the baselines, effective sizes, worst E and the poor-performance region from every point's evaluation.

    evaluations: every grid point's evaluation pointer (dsl.Collected over the loop: KFP backends >= 2.14, see
    docs/deploy.md "Fan-in"); the records themselves are read from storage and checked against them.
    analysis: a pointer to analysis.json; metrics: per point its test-loss damage, and the study's largest."""
    from repeatlab import lineage

    lineage.publish_analysis(study_config, points, evaluations, analysis, metrics)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def analyze_after_loop(study_config: str, points: Input[Dataset], analysis: Output[Artifact], metrics: Output[Metrics]):
    """`analyze` for KFP backends before 2.14, which do not resolve dsl.Collected: ordered after the whole loop, it
    reads every point's eval.json from storage (docs/deploy.md, "Fan-in"); the UI's lineage then ends at each
    point's evaluation and starts again at the study's points."""
    from repeatlab import lineage

    lineage.publish_analysis(study_config, points, None, analysis, metrics)
