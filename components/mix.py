from kfp import dsl
from kfp.dsl import Dataset, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def mix(run_url: str, plan: Output[Dataset]) -> str:
    """Build the exact mixture plan of one point (reused when already built); returns the run URL."""
    import json
    import os

    from repeatlab import steps, storage

    info = steps.mix(run_url)
    plan.metadata["uri"] = storage.join(run_url, "plan.npy")
    plan.metadata.update({k: info["realized"][k] for k in ("fraction", "epochs", "repeated_tokens")})
    os.makedirs(os.path.dirname(plan.path), exist_ok=True)
    with open(plan.path, "w") as fh:
        json.dump(info, fh, indent=2, sort_keys=True)
    return run_url
