from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def report(
    study_config: str,
    analysis: Input[Artifact],
    html: Output[HTML],
    markdown: Output[Markdown],
    results: Output[Dataset],
):
    """Write the study report from the analysis. html and markdown are the report itself (the Kubeflow UI renders
    them; the Markdown has its figures inlined as data URIs); results is a pointer to results.csv."""
    from repeatlab import lineage, steps

    lineage.storage_url_of(analysis)  # a pointer: the analysis this report is written from
    urls = steps.report(study_config)
    lineage.publish_report(urls, html, markdown, results)
