from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Markdown, Metrics, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def audit_corpus(
    corpus_url: str,
    out_url: str,
    audit_json: Output[Artifact],
    html: Output[HTML],
    markdown: Output[Markdown],
    metrics: Output[Metrics],
    params: str = "",
    study: str = "",
    write_deduplicated: str = "",
    remove: str = "flagged",
    options_json: str = "{}",
) -> str:
    """Audit a corpus's repetition and place it on the damage map (`repeatlab audit`); usable on its own or before
    prepare (pass the returned URL of the deduplicated corpus, or the input URL when none is written, as corpus.url).

    params: non-embedding parameters N ("" = profile only); study: analysis.json URL or study YAML ("" = the paper's
    region); options_json: scan settings by name, e.g. {"min_span": 50, "threshold": 0.8, "shard_tokens": 8388608}.
    """
    import json

    from repeatlab import audit
    from repeatlab.audit_fanout import publish_kfp_outputs
    from repeatlab.audit_scan import ScanSettings

    settings = ScanSettings(**json.loads(options_json or "{}"))
    result, scanned = audit.run_audit(corpus_url, settings, n_params=params or None, study=study or None)
    if write_deduplicated:
        result["deduplicated"] = audit.write_deduplicated(result, scanned, write_deduplicated, remove)
    publish_kfp_outputs(result, out_url, audit_json, html, markdown, metrics)
    return write_deduplicated or corpus_url


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def audit_plan(corpus_url: str, out_url: str, work_url: str, groups: int) -> List[int]:
    """Fan-out audit, step 1: cut the input files into at most `groups` groups (stored at work_url/plan.json;
    work_url "" = out_url/work)."""
    from repeatlab.audit_fanout import work_url_for, write_plan

    return write_plan(corpus_url, groups, work_url_for(out_url, work_url))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def audit_map(corpus_url: str, out_url: str, work_url: str, group: int, options_json: str = "{}") -> str:
    """Fan-out audit, map: read one file group; hashes, signatures, token shards and the fingerprint spill go to
    work_url/group-NNNNN/ in storage (the reduce step reads them there). Returns that URL."""
    import json

    from repeatlab.audit_fanout import map_group, read_plan, work_url_for
    from repeatlab.audit_scan import ScanSettings

    work_url = work_url_for(out_url, work_url)
    files = read_plan(work_url)[group]
    return map_group(corpus_url, files, group, work_url, ScanSettings(**json.loads(options_json or "{}")))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def audit_reduce(
    corpus_url: str,
    out_url: str,
    work_url: str,
    audit_json: Output[Artifact],
    html: Output[HTML],
    markdown: Output[Markdown],
    metrics: Output[Metrics],
    params: str = "",
    study: str = "",
    write_deduplicated: str = "",
    remove: str = "flagged",
    options_json: str = "{}",
) -> str:
    """Fan-out audit, reduce: merge every group's partial results from storage into the whole corpus's audit (the
    same audit.json and report as `audit_corpus`); returns the deduplicated corpus's URL, or the input URL."""
    import json

    from repeatlab import audit
    from repeatlab.audit_fanout import publish_kfp_outputs, read_plan, reduce_groups, work_url_for
    from repeatlab.audit_scan import ScanSettings

    work_url = work_url_for(out_url, work_url)
    settings = ScanSettings(**json.loads(options_json or "{}"))
    groups = len(read_plan(work_url))

    def merged(url, s, corpus_cfg, tokenizer):
        return reduce_groups(url, groups, work_url, s, corpus_cfg, tokenizer)

    result, scanned = audit.run_audit(
        corpus_url, settings, n_params=params or None, study=study or None, scan_fn=merged
    )
    if write_deduplicated:
        result["deduplicated"] = audit.write_deduplicated(result, scanned, write_deduplicated, remove)
    publish_kfp_outputs(result, out_url, audit_json, html, markdown, metrics)
    return write_deduplicated or corpus_url
