"""The two small hostname facts every part needs: what a DNS label looks like, and the host of
an HTTP request without its port. Full hostname rules (IDNA, public suffixes, wildcards) belong
to ``domains.hostnames``."""
from __future__ import annotations

import re

HOSTNAME_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
"""One lowercase LDH label (use with ``fullmatch``)."""


def host_without_port(host_header: str) -> str:
    """``Blog.Example.test:8443`` -> ``blog.example.test``; anything odd stays odd, so the
    hostname checks that follow refuse it."""
    return host_header.partition(":")[0].lower()
