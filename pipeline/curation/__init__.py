"""Curation stages between decoding and sharding: recipe, captions, filters, rules,
decontamination, deduplication, and the resolution of their decisions."""
