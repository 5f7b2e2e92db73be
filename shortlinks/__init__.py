"""Short links: the store and its rules (``links``), the resolver with its cache (``resolver``),
the WSGI redirect app (``app``, run by ``serve``), the API (``api``) and bulk import and QR
codes (``bulk``). Plain links are also answered by HAProxy itself from a map."""
