"""The operator's way to the control service: HTTPS to its API with the platform's token, never
the store. Every failure becomes an :class:`OperatorError`: one sentence naming the setting or
the fix, and the exit code that says what kind of failure it was."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from kit.settings import Settings, SettingsError, load_settings

OK, REFUSED, USAGE, UNREACHABLE, NOT_YET = 0, 1, 2, 3, 4
"""Exit codes: done; the service answered an error (not found, refused input, conflict, a
failure); usage or configuration (flags, settings, certificates, the token); the service could
not be reached or is unavailable (retry later); `domains check`: DNS is not right yet."""
OPERATOR = ("api_token",)
URL, TOKEN, CA = "EDGE_CONTROL_URL", "EDGE_API_TOKEN", "EDGE_CONTROL_CA_BUNDLE"
CLIENT_CERT, CLIENT_KEY = "EDGE_CONTROL_CLIENT_CERT", "EDGE_CONTROL_CLIENT_KEY"
SETTINGS_HELP = f"""settings (environment, or their lowercase keys in a TOML file: --config,
$EDGE_CONFIG, else ~/.config/edgectl/config.toml):
  {URL:<25} the control service, https://host:port (several: comma-separated;
  {"":<25} default: this host's listen_host:listen_port)
  {TOKEN:<25} the platform's API token (required)
  {CA:<25} the CA file that signed the control service's certificate
  {CLIENT_CERT:<25} a client certificate and its key, where the service
  {CLIENT_KEY:<25} (or a proxy before it) asks for one"""
_TIMEOUT = 60.0
_NO_ROUTE = "The requested URL was not found"


class OperatorError(Exception):
    """One sentence for the operator, and the exit code."""

    def __init__(self, message: str, code: int = REFUSED, api_code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.api_code = api_code
        """The API's own ``code`` (``conflict``, ``not_found``...), when it answered one."""


def user_config() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgectl" / "config.toml"


def operator_settings(config: str | None) -> Settings:
    """The settings from ``config``, $EDGE_CONFIG or the user's config file, and the
    environment; a missing or bad one is an :class:`OperatorError` naming it."""
    default = user_config()
    config = config or os.environ.get("EDGE_CONFIG") or (
        str(default) if default.is_file() else None)
    try:
        return load_settings(config_file=config, required=OPERATOR)
    except SettingsError as exc:
        where = f"in {config} or the environment" if config else \
            f"in the environment or {default}"
        raise OperatorError(f"{exc} (set it {where})", USAGE) from None


def _readable(path: str, name: str) -> str:
    if not os.access(path, os.R_OK) or not os.path.isfile(path):
        raise OperatorError(f"{name} names {path}, which is not a readable file", USAGE)
    return path


class ControlClient:
    """Asks the first control URL; one that does not answer hands the request to the next."""

    def __init__(self, settings: Settings, timeout: float = _TIMEOUT) -> None:
        self.urls = [url.rstrip("/") for url in settings.control_urls]
        self._configured = bool(settings.control_url)
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise OperatorError(f"{URL} must be http(s)://host:port, not {url!r}", USAGE)
        self._verify: str | bool = True
        if settings.control_ca_bundle:
            self._verify = _readable(settings.control_ca_bundle, CA)
        self._cert: tuple[str, str] | None = None
        if settings.control_client_cert:
            self._cert = (_readable(settings.control_client_cert, CLIENT_CERT),
                          _readable(settings.control_client_key, CLIENT_KEY))
        self._timeout = timeout
        self._session = requests.Session()
        self._session.headers.update({"Authorization": f"Bearer {settings.api_token}",
                                      "Accept": "application/json"})

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items()
                                                 if v is not None and v is not False})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def again_on_conflict(self, method: str, path: str, tries: int = 4) -> Any:
        """A request the service may answer 409 because the worker moved the item meanwhile
        ("changed while we worked on it; try again"): tried again, as the answer asks."""
        for attempt in range(1, tries + 1):
            try:
                return self.request(method, path)
            except OperatorError as exc:
                if exc.api_code != "conflict" or attempt == tries:
                    raise
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON; an :class:`OperatorError` for anything else."""
        for attempt, url in enumerate(self.urls):
            try:
                response = self._session.request(method, url + path, verify=self._verify,
                                                 cert=self._cert, timeout=self._timeout,
                                                 **kwargs)
            except requests.exceptions.SSLError as exc:
                raise tls_error(exc, url, self._cert is not None) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                if self._cert is not None and url.startswith("https:") and _cut(str(exc)):
                    raise refused_certificate(url) from None
                if attempt < len(self.urls) - 1:
                    continue
                raise self._unreachable(exc, url) from None
            except OSError as exc:  # a certificate file requests could not load
                raise OperatorError(f"cannot load the TLS files ({exc}): check {CA}, "
                                    f"{CLIENT_CERT} and {CLIENT_KEY}", USAGE) from None
            if response.status_code in (502, 504) and attempt < len(self.urls) - 1:
                continue
            return answer(response, url, path)
        raise AssertionError("unreachable")

    def _unreachable(self, exc: Exception, url: str) -> OperatorError:
        unset = "" if self._configured else f" ({URL} is not set; that is the default)"
        if isinstance(exc, requests.Timeout):
            return OperatorError(f"the control service at {url} did not answer within "
                                 f"{self._timeout:.0f} s: try again, or check {URL}{unset}",
                                 UNREACHABLE)
        text = str(exc)
        if "resolve" in text or "Name or service not known" in text:
            return OperatorError(f"cannot reach the control service at {url}: its name does "
                                 f"not resolve; check {URL}{unset}", UNREACHABLE)
        if url.startswith("http:") and ("reset by peer" in text or "aborted" in text):
            return OperatorError(f"the control service at {url} closed the connection: if it "
                                 f"speaks HTTPS, use https:// in {URL}", USAGE)
        why = "connection refused" if "refused" in text.lower() else "no connection"
        return OperatorError(f"cannot reach the control service at {url} ({why}): is `edgectl "
                             f"serve` running there? check {URL}{unset}", UNREACHABLE)


def _cut(text: str) -> bool:
    """The server closed the connection mid-handshake: how TLS 1.3 often shows a client
    certificate it refused (its alert comes after the client thinks the handshake is done)."""
    return any(sign in text for sign in ("EOF occurred", "UNEXPECTED_EOF", "reset by peer",
                                         "Connection aborted"))


def refused_certificate(url: str) -> OperatorError:
    return OperatorError(f"the control service at {url} refused the TLS handshake: it needs a "
                         f"client certificate its CA signed; set {CLIENT_CERT} and "
                         f"{CLIENT_KEY}", USAGE)


def tls_error(exc: requests.exceptions.SSLError, url: str,
              sent_certificate: bool = False) -> OperatorError:
    """What a failed TLS handshake means for the operator, by OpenSSL's reason."""
    text = str(exc)
    host = urlsplit(url).hostname
    if "Hostname mismatch" in text or "IP address mismatch" in text:
        return OperatorError(f"the control service's certificate is not valid for {host}: use "
                             f"a name it was issued for in {URL}", USAGE)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return OperatorError(f"the control service's certificate is not trusted: set {CA} to "
                             "the CA file that signed it (its control_tls_cert's issuer)", USAGE)
    if any(alert in text.upper() for alert in ("UNKNOWN_CA", "BAD_CERTIFICATE",
                                               "CERTIFICATE_UNKNOWN", "CERTIFICATE_REQUIRED",
                                               "HANDSHAKE_FAILURE", "ACCESS_DENIED")) or \
            (sent_certificate and _cut(text)):
        return refused_certificate(url)
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return OperatorError(f"the control service at {url} does not speak HTTPS: use "
                             f"http:// in {URL} (or give it control_tls_cert)", USAGE)
    return OperatorError(f"TLS with the control service at {url} failed ({_reason(text)}): "
                         f"check {URL} and {CA}", USAGE)


def _reason(text: str) -> str:
    """OpenSSL's reason out of requests' nested message."""
    start = text.rfind("[SSL")
    return text[start:].split("(_ssl", 1)[0].strip(" ')") if start >= 0 else text[:200]


def answer(response: requests.Response, url: str, path: str) -> Any:
    """A success's JSON body, or the error the service answered as an OperatorError."""
    body: Any = None
    if "json" in response.headers.get("Content-Type", ""):
        try:
            body = response.json()
        except ValueError:
            body = None
    if response.ok:
        if body is None:
            raise OperatorError(f"{url} answered {path} with something other than the control "
                                f"service's JSON: check {URL}", USAGE)
        return body
    raise status_error(response, body, url, path)


def status_error(response: requests.Response, body: Any, url: str,
                 path: str) -> OperatorError:
    status = response.status_code
    said = body.get("error") if isinstance(body, dict) else None
    code = body.get("code") if isinstance(body, dict) else None
    if said is None:
        return OperatorError(f"{url} answered {path} with HTTP {status}, not the control "
                             f"service's error: check {URL}", USAGE if status < 500 else REFUSED)
    if status == 401:
        return OperatorError(f"the control service refused the API token: set {TOKEN} to its "
                             "api_token (the platform's token)", USAGE)
    if status == 403 and code == "client_certificate_required":
        return OperatorError(f"the control service needs a client certificate its CA signed: "
                             f"set {CLIENT_CERT} and {CLIENT_KEY}", USAGE)
    if status == 404 and str(said).startswith(_NO_ROUTE):
        return OperatorError(f"the control service at {url} has no {path.split('?')[0]}: it "
                             f"may be an older release (upgrade it) or not the control service "
                             f"(check {URL})", REFUSED)
    if status in (502, 503, 504):
        return OperatorError(f"the control service is unavailable: {said}", UNREACHABLE)
    if status >= 500:
        request_id = response.headers.get("X-Request-ID", "?")
        return OperatorError(f"the control service failed ({status}): see its log for request "
                             f"{request_id}", REFUSED)
    return OperatorError(str(said), REFUSED, str(code) if code else None)


def agent_failure(exc: Exception, url: str) -> OperatorError:
    """An agent's request (``edgectl plan``) that failed, said as the operator commands say it,
    naming the agent's settings."""
    if isinstance(exc, requests.exceptions.SSLError):
        return tls_error(exc, url)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return OperatorError(f"cannot reach the control service at {url}: is `edgectl serve` "
                             f"running there? check {URL}", UNREACHABLE)
    response = getattr(exc, "response", None)
    if isinstance(exc, requests.HTTPError) and response is not None:
        if response.status_code == 401:
            return OperatorError("the control service refused the edge token: set "
                                 "EDGE_EDGE_TOKEN to its edge_token", USAGE)
        try:
            body = response.json()
        except ValueError:
            body = None
        return status_error(response, body, url, response.request.path_url)
    return OperatorError(str(exc), USAGE)


def segment(text: str) -> str:
    """One path segment of a URL (a hostname, a slug): nothing in it escapes the path."""
    return quote(text, safe="")
