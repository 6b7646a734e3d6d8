"""TLS to PostgreSQL: from the ``ssl`` settings to what each driver connects with.

- ``disable``: no TLS.
- ``require``: encrypted, but the server's certificate is not checked: whoever sits between
  the process and the server can pose as the server.
- ``verify-ca``: the certificate must be signed by an authority of ``ssl_ca``.
- ``verify-full``: and be issued for the host name (or address) of the URL. Without
  ``ssl_ca``, the authorities the system trusts, as for HTTPS; the same as libpq's
  ``sslrootcert=system``, which libpq allows with ``verify-full`` only, since any public
  authority signs certificates for anyone's host names.

asyncpg gets an `ssl.SSLContext` built here, so nothing but these settings decides
(asyncpg would otherwise read ``PGSSLMODE`` and files under ``~/.postgresql``); psycopg gets
libpq's ``sslmode``, ``sslrootcert``, ``sslcert`` and ``sslkey``. File paths are not
secrets and appear in messages; what the files hold never does.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Literal, NoReturn

from .errors import ConfigurationError

__all__ = ["SSLMode", "libpq_parameters", "readable_file", "ssl_context", "tls_problems"]

SSLMode = Literal["disable", "require", "verify-ca", "verify-full"]
"""The TLS modes, named as libpq names them."""

_VERIFYING = ("verify-ca", "verify-full")


def readable_file(path: Path) -> Path:
    """*path*, absolute, when it is a file this process can open; nothing of it is read."""
    if not path.exists():
        raise ConfigurationError(f"no such file: {path}")
    if not path.is_file():
        raise ConfigurationError(f"not a file: {path}")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigurationError(f"cannot be read: {path} ({exc.strerror})") from None
    return path.absolute()


def tls_problems(
    mode: SSLMode | None, *, ca: Path | None, cert: Path | None, key: Path | None
) -> list[tuple[str, str]]:
    """What is wrong with these TLS settings, as ``(key, message)``; empty when nothing."""
    files = {"ssl_ca": ca, "ssl_cert": cert, "ssl_key": key}
    if mode is None or mode == "disable":
        without = "without ssl" if mode is None else "with ssl=disable"
        return [
            (name, f"has no effect {without}; set ssl to require, verify-ca or verify-full")
            for name, path in files.items()
            if path is not None
        ]
    problems: list[tuple[str, str]] = []
    if ca is not None and mode == "require":
        problems.append(
            (
                "ssl_ca",
                "ssl=require does not check the server's certificate; set ssl to verify-ca "
                "or verify-full to check it against ssl_ca",
            )
        )
    if ca is None and mode == "verify-ca":
        problems.append(
            (
                "ssl_ca",
                "required with ssl=verify-ca: the authority that signed the server's "
                "certificate (only verify-full may rely on the system's trusted authorities)",
            )
        )
    if (cert is None) != (key is None):
        missing = "ssl_key" if key is None else "ssl_cert"
        problems.append((missing, "ssl_cert and ssl_key go together: set both or neither"))
    if not problems:
        try:
            ssl_context(mode, ca=ca, cert=cert, key=key)
        except ConfigurationError as exc:
            problems.extend(exc.problems)
    return problems


def ssl_context(
    mode: SSLMode, *, ca: Path | None, cert: Path | None, key: Path | None
) -> ssl.SSLContext:
    """The context asyncpg connects with for a mode other than ``disable``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode in _VERIFYING:
        context.check_hostname = mode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED
        if ca is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            try:
                context.load_verify_locations(cafile=ca)
            except (ssl.SSLError, OSError):
                _refuse("ssl_ca", "holds no certificate in PEM format", ca)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None and key is not None:
        _load_client_certificate(context, cert, key)
    return context


def libpq_parameters(
    mode: SSLMode, *, ca: Path | None, cert: Path | None, key: Path | None
) -> dict[str, str]:
    """libpq's connection parameters for these TLS settings."""
    parameters: dict[str, str] = {"sslmode": mode}
    if mode in _VERIFYING:
        parameters["sslrootcert"] = str(ca) if ca is not None else _system_authorities()
    if mode != "disable" and cert is not None and key is not None:
        parameters["sslcert"] = str(cert)
        parameters["sslkey"] = str(key)
    return parameters


class _Passphrase(Exception):
    """The key file asks for a passphrase."""


def _no_passphrase() -> NoReturn:
    # Without this, OpenSSL would ask for the passphrase on the terminal.
    raise _Passphrase()


def _load_client_certificate(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except (ssl.SSLError, OSError):
        _refuse("ssl_cert", "holds no certificate in PEM format", cert)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _Passphrase:
        _refuse("ssl_key", "is encrypted with a passphrase; use a key file without one", key)
    except (ssl.SSLError, OSError) as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            _refuse("ssl_key", "is not the private key of ssl_cert", key)
        _refuse("ssl_key", "holds no private key in PEM format", key)


def _refuse(name: str, message: str, path: Path) -> NoReturn:
    text = f"{path} {message}"
    raise ConfigurationError(f"{name}: {text}", problems=[(name, text)]) from None


def _system_authorities() -> str:
    # The file Python's own default context reads; libpq's "system" (libpq 16 and later)
    # means the OpenSSL it was built with, which a wheel's bundled OpenSSL may not find.
    found = ssl.get_default_verify_paths().cafile
    return found if found and os.path.isfile(found) else "system"
