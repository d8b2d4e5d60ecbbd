"""`webpairs demo`: the whole system on bundled data (an application, not library code)."""
