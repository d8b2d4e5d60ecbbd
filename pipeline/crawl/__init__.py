"""Crawling: URL normalization, downloads (politeness, SSRF guard, DNS), decoding."""
