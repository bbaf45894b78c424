from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def report(study_config: str, analysis_url: str, html: Output[HTML], markdown: Output[Markdown],
           results: Output[Dataset]) -> str:
    """Write the study report; the Kubeflow UI shows its HTML and Markdown. Returns the report's URL."""
    import os

    from repeatlab import steps, storage

    paths = steps.report(study_config)
    folder = storage.join(analysis_url.rsplit("/", 1)[0], "report")
    for artifact, name in ((html, "index.html"), (markdown, "report.md"), (results, "results.csv")):
        artifact.metadata["uri"] = storage.join(folder, name)
        os.makedirs(os.path.dirname(artifact.path), exist_ok=True)
        with open(artifact.path, "wb") as fh:
            fh.write(storage.read_bytes(storage.join(folder, name)))
    return paths.get("html", storage.join(folder, "index.html"))
