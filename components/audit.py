from kfp import dsl
from kfp.dsl import HTML, Artifact, Markdown, Metrics, Output

from repeatlab.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def audit_corpus(corpus_url: str, out_url: str, audit_json: Output[Artifact], html: Output[HTML],
                 markdown: Output[Markdown], metrics: Output[Metrics], params: str = "", study: str = "",
                 write_deduplicated: str = "", remove: str = "flagged", options_json: str = "{}") -> str:
    """Audit a corpus's repetition and place it on the damage map (`repeatlab audit`); usable on its own or before
    prepare (pass the returned URL of the deduplicated corpus, or the input URL when none is written, as corpus.url).

    params: non-embedding parameters N ("" = profile only); study: analysis.json URL or study YAML ("" = the paper's
    region); options_json: scan settings by name, e.g. {"min_span": 50, "threshold": 0.8, "shard_tokens": 8388608}.
    """
    import json
    import os

    from repeatlab import audit, storage
    from repeatlab.audit_report import write_audit_report
    from repeatlab.audit_scan import ScanSettings

    settings = ScanSettings(**json.loads(options_json or "{}"))
    result, scanned = audit.run_audit(corpus_url, settings, n_params=params or None, study=study or None)
    if write_deduplicated:
        result["deduplicated"] = audit.write_deduplicated(result, scanned, write_deduplicated, remove)
    paths = write_audit_report(result, out_url)
    for artifact, name in ((audit_json, "audit.json"), (html, "index.html"), (markdown, "report.md")):
        artifact.metadata["uri"] = paths[name]
        os.makedirs(os.path.dirname(artifact.path), exist_ok=True)
        with open(artifact.path, "wb") as fh:
            fh.write(storage.read_bytes(paths[name]))
    repeated = sum(r["fraction"] for r in result["profile"] if r["e_low"] >= 2)
    metrics.log_metric("repeated_token_share", repeated)
    metrics.log_metric("exact_duplicate_documents", result["exact"]["duplicate_documents"])
    metrics.log_metric("near_duplicate_clusters", result["near"]["clusters"])
    if result["placement"] is not None:
        flagged = [b for b in result["placement"]["buckets"] if b["in_region"]]
        metrics.log_metric("flagged_token_share", sum(b["fraction"] for b in flagged))
    return write_deduplicated or corpus_url
