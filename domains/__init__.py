"""The custom-domain lifecycle: hostnames, DNS checks, the publisher API."""
