"""ACME accounts, orders, HTTP-01 challenges and the certificate store."""
