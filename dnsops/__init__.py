"""What the world's DNS says and what we write to it: hostnames, checks and reports, the records
a publisher creates, DCV delegation (DNS-01) and registrar providers. Below ``domains``: it
knows hostnames, never a domain's lifecycle."""
