from kfp import dsl

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def resolve_study(study_config: str, storage_root: str) -> str:
    """Validate the study and put the run's storage root into it (empty: keep the study's); returns it as JSON."""
    from repeatlab.config import with_storage_root

    return with_storage_root(study_config, storage_root)
