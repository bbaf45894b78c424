from kfp import dsl
from kfp.dsl import Artifact, Metrics, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(run_url: str, metrics: Output[Metrics], eval_record: Output[Artifact]) -> str:
    """Evaluate one trained point; the headline numbers show as the step's metrics in the Kubeflow UI."""
    import json
    import os

    from repeatlab import steps, storage

    record = steps.evaluate(run_url)
    point = record["point"]
    headline = {
        "n_params_nonembed": point["model"]["n_params_nonembed"],
        "fraction": point["fraction"],
        "epochs": point["epochs"],
        "seed": point["seed"],
        "test_loss": record.get("test_loss"),
        "repeated_loss": record.get("repeated_loss"),
        "copying_loss": (record.get("copying") or {}).get("mean_copies_2_to_last"),
        "icl_score": record.get("icl_score"),
        "prefix_matching_max": (record.get("aggregates") or {}).get("prefix_matching_max"),
    }
    for name, value in headline.items():
        if value is not None:
            metrics.log_metric(name, float(value))
    eval_record.metadata["uri"] = storage.join(run_url, "eval.json")
    os.makedirs(os.path.dirname(eval_record.path), exist_ok=True)
    with open(eval_record.path, "w") as fh:
        json.dump(record, fh, indent=2, sort_keys=True)
    return storage.join(run_url, "eval.json")
