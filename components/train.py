from typing import List

from kfp import dsl
from kfp.dsl import Model, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def plan_packs(study_config: str) -> List[str]:
    """The study's training packs (points of one shape and schedule, repeatlab.packs), each a JSON list of run URLs:
    the items of the train fan-out."""
    from repeatlab import steps

    return steps.plan_packs(study_config)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(run_urls: str, nproc_per_node: int, model: Output[Model]) -> str:
    """Train one pack (a JSON list of run URLs) with torchrun in this pod, as one batched program (resumes each point
    from its last checkpoint; skips finished points)."""
    import json
    import os

    from repeatlab import steps, storage

    urls = json.loads(run_urls)
    done = steps.train_pack(urls, nproc_per_node=int(nproc_per_node))
    model.metadata["uri"] = [storage.join(url, "checkpoints") for url in urls]
    model.metadata["skipped"] = [bool(d.get("skipped")) for d in done]
    os.makedirs(os.path.dirname(model.path), exist_ok=True)
    with open(model.path, "w") as fh:
        json.dump(done, fh, indent=2, sort_keys=True)
    return run_urls
