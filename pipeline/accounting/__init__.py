"""The funnel: per-reason counts (`stats`) and the report (`report`)."""
