from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def plan_grid(study_config: str, corpus: Input[Dataset], points: Output[Dataset]) -> List[str]:
    """List the study's grid points (content-addressed); returns their run URLs, the items of the fan-out.

    points: a pointer to the study's points.json."""
    from repeatlab import layout, lineage, steps

    run_urls = steps.plan_grid(study_config, lineage.storage_url_of(corpus))
    cfg = steps.load_study(study_config)
    study = layout.Study(layout.study_url(cfg.storage.root, cfg.name))
    lineage.write_pointer(points, study.points, count=len(run_urls))
    # Strings, not dicts: the local runner turns ints inside list/dict parameters into floats.
    return run_urls
