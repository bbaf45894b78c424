from kfp import dsl
from kfp.dsl import Dataset, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def prepare_corpus(study_config: str, corpus: Output[Dataset]):
    """Read, deduplicate, split and tokenize the study's corpus (reused when already prepared).

    corpus: a pointer to the prepared corpus folder in the study's storage (repeatlab/lineage.py)."""
    from repeatlab import lineage, steps

    result = steps.prepare(study_config)
    splits = result["manifest"]["splits"]
    lineage.write_pointer(
        corpus,
        result["corpus_url"],
        corpus_id=result["corpus_id"],
        **{f"{split}_tokens": counts["tokens"] for split, counts in splits.items()},
    )
