from kfp import dsl
from kfp.dsl import Dataset, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def prepare_corpus(study_config: str, corpus: Output[Dataset]) -> str:
    """Read, deduplicate, split and tokenize the study's corpus (reused when already prepared); returns its URL."""
    import json
    import os

    from repeatlab import steps

    result = steps.prepare(study_config)
    corpus.metadata["uri"] = result["corpus_url"]
    corpus.metadata["corpus_id"] = result["corpus_id"]
    for split, counts in result["manifest"]["splits"].items():
        corpus.metadata[f"{split}_tokens"] = counts["tokens"]
    os.makedirs(os.path.dirname(corpus.path), exist_ok=True)
    with open(corpus.path, "w") as fh:
        json.dump(result["manifest"], fh, indent=2, sort_keys=True)
    return result["corpus_url"]
