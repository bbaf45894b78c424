from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(model: Input[Model], metrics: Output[Metrics], evaluation: Output[Artifact]):
    """Evaluate every point a trained model pointer names (one point, or a pack of them); their headline numbers
    (losses, best induction and previous-token heads) are the step's metrics in the Kubeflow UI, named by point
    label when a pack holds several. evaluation: a pointer to the eval.json of each point."""
    from repeatlab import lineage

    lineage.publish_evaluation(model, metrics, evaluation)
