from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def mix(run_url: str, corpus: Input[Dataset], plan: Output[Dataset]):
    """Build the exact mixture plan of one point from the corpus (reused when already built).

    plan: a pointer to the point's plan.npy, with the realized f, E and repeated tokens as metadata."""
    from repeatlab import layout, lineage, steps, storage
    from repeatlab.errors import PlanError

    run = layout.Run(run_url)
    point = storage.read_json(run.point)
    corpus_id = lineage.read_pointer(corpus).get("corpus_id")
    if point["corpus_id"] != corpus_id:
        raise PlanError(
            f"{run_url}/point.json: corpus_id {point['corpus_id']!r} is not this run's corpus "
            f"{corpus_id!r}; plan the grid again"
        )
    info = steps.mix(run_url)
    realized = info["realized"]
    lineage.write_pointer(
        plan,
        run.plan_npy,
        run_url=run_url,
        point_id=point["point_id"],
        point=lineage.point_label(point),
        fraction=realized["fraction"],
        epochs=realized["epochs"],
        repeated_tokens=realized["repeated_tokens"],
    )
