from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def plan_grid(study_config: str, corpus_url: str, points: Output[Dataset]) -> List[str]:
    """List the study's grid points (content-addressed); returns their run URLs, the items of the fan-out."""
    import os

    from repeatlab import steps, storage

    run_urls = steps.plan_grid(study_config, corpus_url)
    cfg = steps.load_study(study_config)
    from repeatlab.grid import study_url

    points.metadata["uri"] = storage.join(study_url(cfg.storage.root, cfg.name), "points.json")
    points.metadata["count"] = len(run_urls)
    os.makedirs(os.path.dirname(points.path), exist_ok=True)
    with open(points.path, "w") as fh:
        fh.write("\n".join(run_urls) + "\n")
    # Strings, not dicts: the local runner turns ints inside list/dict parameters into floats.
    return run_urls
