"""The root of our own errors. Each part has one base class under it (``DomainError``,
``CertsError``, ``EdgeError``, ``ShortlinkError``, ``AdminError``), and vendor errors (boto3,
dnspython, requests) stop at the module that calls the vendor."""
from __future__ import annotations


class EdgeRouterError(Exception):
    """Root of every error this product raises on purpose (the store's ``StoreError`` aside:
    the store sits below the kit)."""
