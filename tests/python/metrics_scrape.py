#!/usr/bin/env python3
"""Scrapes a storaged metrics endpoint and parses the text with the
Prometheus client library's own parser, so that the exposition is checked
by a real implementation of the format.

Usage: metrics_scrape.py URL

Prints one JSON object: {"families": [{"name", "type", "samples":
[[sample name, {labels}, value], ...]}, ...]}. A reply that is not HTTP
200, or text the parser rejects, raises (non-zero exit status).
"""

import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    url = sys.argv[1]
    with urllib.request.urlopen(url, timeout=30) as reply:
        if reply.status != 200:
            raise SystemExit(f"HTTP {reply.status}")
        content_type = reply.headers.get("Content-Type", "")
        if not content_type.startswith("text/plain; version=0.0.4"):
            raise SystemExit(f"Content-Type {content_type!r}")
        text = reply.read().decode("utf-8")
    families = []
    for family in text_string_to_metric_families(text):
        samples = [[s.name, s.labels, s.value] for s in family.samples]
        families.append({"name": family.name, "type": family.type, "samples": samples})
    json.dump({"families": families}, sys.stdout)


if __name__ == "__main__":
    main()
