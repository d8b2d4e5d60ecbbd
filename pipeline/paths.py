"""Path joining that does not need a filesystem plugin.

Beam's `FileSystems.join` looks up the filesystem registered for a scheme, so merely building
a job graph whose output is gs:// or s3:// fails on a machine without `apache-beam[gcp]` /
`[aws]`, although nothing is read or written until the job runs. Joining is pure string work
for every scheme Beam knows (they all use '/'), so it is done here; reading and writing still
go through `FileSystems` and need the plugin where the job runs.
"""

from __future__ import annotations

import os


def join_path(base: str, *parts: str) -> str:
    """`base/part/...`: '/'-joined for URLs (scheme://...), `os.path.join` for local paths."""
    if "://" in base:
        tail = "/".join(p.strip("/") for p in parts if p)
        return base.rstrip("/") + "/" + tail if tail else base
    return os.path.join(base, *parts)
