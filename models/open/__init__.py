"""Open model families backed by diffusers pipelines (Wan, ...), split into Tessera's stages.

One file per family (``wan.py``); the plumbing they share (reading a diffusers folder, the
weights' version, loading components, the stateless multistep solver) is in ``common.py``.
"""
