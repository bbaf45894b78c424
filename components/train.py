from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(plan: Input[Dataset], nproc_per_node: int, model: Output[Model]):
    """Train one point with torchrun in this pod (resumes from its last checkpoint; skips a finished point).

    plan: the mix step's pointer to the point's plan; model: a pointer to the point's checkpoints."""
    from repeatlab import lineage, steps

    run_url = lineage.run_url_of(plan)
    done = steps.train(run_url, nproc_per_node=int(nproc_per_node))
    lineage.publish_model(model, run_url, done)
