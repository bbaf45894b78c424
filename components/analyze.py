from kfp import dsl
from kfp.dsl import Artifact, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def analyze(study_config: str, analysis: Output[Artifact]) -> str:
    """Fit the baselines, effective sizes, worst E and the poor-performance region; returns analysis.json's URL.

    Reads every grid point's eval.json from storage (the pipeline runs it after the whole loop), so it takes no
    fan-in of the loop's outputs: see docs/deploy.md, "Fan-in", for the KFP backends this keeps working on."""
    import json
    import os

    from repeatlab import steps, storage
    from repeatlab.grid import study_url

    result = steps.analyze(study_config)
    cfg = steps.load_study(study_config)
    url = storage.join(study_url(cfg.storage.root, cfg.name), "analysis.json")
    analysis.metadata["uri"] = url
    analysis.metadata["evaluated_points"] = len(result.get("runs") or [])
    analysis.metadata["missing_points"] = len(result.get("missing") or [])
    os.makedirs(os.path.dirname(analysis.path), exist_ok=True)
    with open(analysis.path, "w") as fh:
        json.dump(result, fh, indent=2, sort_keys=True)
    return url
