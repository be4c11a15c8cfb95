"""Batch rendering: a JSONL/CSV file of requests rendered on the cluster, exactly once per item.

* :mod:`.spec`    pure: parsing, limits, validation with line numbers, item identity and keys
* :mod:`.report`  pure: the report rows, summary, contact sheet and static HTML
* :mod:`.store`   the batch's durable objects in S3 (``_tessera/batches/{tenant}/{name}/``)
* :mod:`.driver`  the detached Ray actor that runs a batch through the JobFront/JobRunner path
"""
