from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(model: Input[Model], metrics: Output[Metrics], evaluation: Output[Artifact]):
    """Evaluate one trained point; its headline numbers (losses, best induction and previous-token heads) are the
    step's metrics in the Kubeflow UI. evaluation: a pointer to the point's eval.json."""
    from repeatlab import layout, lineage, steps

    run_url = lineage.run_url_of(model)
    record = steps.evaluate(run_url)
    for name, value in lineage.point_metrics(record).items():
        metrics.log_metric(name, value)
    lineage.write_pointer(evaluation, layout.Run(run_url).eval, run_url=run_url,
                          point_id=record.get("point_id"), point=lineage.point_label(record.get("point") or {}),
                          test_loss=record.get("test_loss"), record_sha256=record.get("record_sha256"))
