from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def plan_packs(study_config: str, plans: Input[List[Dataset]], packs: Output[Dataset]) -> List[str]:
    """The study's training packs (points of one shape and schedule, repeatlab.packs), each a JSON list of run URLs:
    the items of the train fan-out.

    plans: every point's plan pointer (dsl.Collected over the mix loop); packs: a pointer to the study's packs.json."""
    from repeatlab import lineage

    return lineage.publish_packs(study_config, plans, packs)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def plan_packs_after_loop(study_config: str, points: Input[Dataset], packs: Output[Dataset]) -> List[str]:
    """`plan_packs` for KFP backends before 2.14 (no dsl.Collected): ordered after the mix loop, it reads the packs
    from storage (docs/deploy.md, "Fan-in")."""
    from repeatlab import lineage

    lineage.storage_url_of(points)  # the study's planned points: the packs are grouped from them
    return lineage.publish_packs(study_config, None, packs)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(packs: Input[Dataset], run_urls: str, nproc_per_node: int, model: Output[Model]):
    """Train one pack (a JSON list of run URLs) with torchrun in this pod, as one batched program (resumes each point
    from its last checkpoint; skips finished points).

    packs: the plan_packs step's pointer; model: a pointer to the pack's checkpoints (every point's run URL)."""
    import json

    from repeatlab import lineage, steps

    lineage.storage_url_of(packs)
    urls = json.loads(run_urls)
    done = steps.train_pack(urls, nproc_per_node=int(nproc_per_node))
    lineage.publish_pack_model(model, urls, done)
