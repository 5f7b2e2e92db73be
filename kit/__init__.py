"""The kit: small pieces every part may use, below the parts and above ``store``.

Request auth and token scopes (``auth``), publication tokens (``tokens``), who is signed in on
the platform (``platform``), the key vault (``vault``), settings loading (``settings``,
``parsers``), logging and its per-request context (``logs``), child processes (``procs``), the
typed app registry (``web``), hostname basics (``hosts``), retry delays (``backoff``),
self-signed certificates (``x509``) and the root of our errors (``errors``). The kit imports
only ``store`` and libraries.
"""
