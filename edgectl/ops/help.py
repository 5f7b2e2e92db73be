"""What `edgectl --help` and each subcommand's help say about settings and exit codes."""
from __future__ import annotations

from kit.settings import ENV_PREFIX

DESCRIPTION = ("The custom-domain edge: run its processes (serve, agent, shortlinks, demo) and "
               "operate it over the control API (status, domains, nodes, links, certs, tokens).")
EXIT_CODES = """exit codes: 0 done; 1 the control service refused or failed (its sentence is printed);
2 usage or settings (flags, a setting, a certificate, the token); 3 the control service cannot
be reached or is unavailable (retry later); 4 `domains check`: DNS is not right yet.
Commands, settings and examples: docs/cli.md"""
PLAN_SETTINGS = """settings: the agent's (environment, or their keys in --config / $EDGE_CONFIG)
  EDGE_EDGE_TOKEN          the edge agents' token (required)
  EDGE_CONTROL_URL         the control service (default http://127.0.0.1:8000)
  EDGE_CONTROL_CA_BUNDLE   the CA file that signed the control service's certificate
  EDGE_CONTROL_CLIENT_CERT, EDGE_CONTROL_CLIENT_KEY   with control_client_ca (mTLS)
  EDGE_EDGE_DIR            the node's releases (default: EDGE_DATA_DIR/edge)"""


def needs(required: tuple[str, ...] | None) -> str | None:
    """The settings a process command cannot run without, for its help."""
    if not required:
        return None
    return (f"needs {', '.join(ENV_PREFIX + name.upper() for name in required)}\n(environment, "
            "or their lowercase keys in --config / $EDGE_CONFIG);\nevery other setting is "
            "optional (docs/reference/configuration.md)")
