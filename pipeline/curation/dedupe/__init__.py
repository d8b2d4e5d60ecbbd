"""Deduplication stages, one module a kind: urls, exact, near, captions, semantic."""
