from kfp import dsl
from kfp.dsl import Model, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(run_url: str, nproc_per_node: int, model: Output[Model]) -> str:
    """Train one point with torchrun in this pod (resumes from its last checkpoint; skips a finished point)."""
    import json
    import os

    from repeatlab import steps, storage

    done = steps.train(run_url, nproc_per_node=int(nproc_per_node))
    model.metadata["uri"] = storage.join(run_url, "checkpoints")
    model.metadata["skipped"] = bool(done.get("skipped"))
    os.makedirs(os.path.dirname(model.path), exist_ok=True)
    with open(model.path, "w") as fh:
        json.dump(done, fh, indent=2, sort_keys=True)
    return run_url
