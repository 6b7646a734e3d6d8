"""Certificates made at test time, and a throwaway PostgreSQL server that speaks TLS.

`Authority` signs certificates (made with ``cryptography``, elliptic-curve keys, valid for
a month). `tls_server` starts a server whose certificate, signed by its own authority,
holds the address ``127.0.0.1`` and no host name, so ``localhost`` reaches the same server
under a name its certificate does not hold. The server also trusts that authority for
client certificates: the role `CERT_USER` may only log in with one (``hostssl ... cert``).

Nothing here is kept: every key and certificate is new for each server, written to
directories the caller owns.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy.engine import make_url

from .postgres import HOST, SUPERUSER, PostgresServer, running_server

__all__ = ["CERT_USER", "Authority", "Issued", "TLSServer", "tls_server"]

CERT_USER = "certuser"
"""The role that logs in with a client certificate only."""

_VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, in PEM."""

    certificate: bytes
    key: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """``name.crt`` and ``name.key`` in *directory*; the key readable by its owner only."""
        cert_path = directory / f"{name}.crt"
        key_path = directory / f"{name}.key"
        cert_path.write_bytes(self.certificate)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key)
        return cert_path, key_path


class Authority:
    """A certificate authority of its own."""

    def __init__(self, name: str) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self._key.public_key()
        self.certificate = (
            _builder(self._name, public)
            .issuer_name(self._name)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(signs=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        """The authority's certificate in PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        addresses: tuple[str, ...] = (),
        hosts: tuple[str, ...] = (),
        client: bool = False,
    ) -> Issued:
        """A certificate for a server at *addresses* and *hosts*, or for a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        purpose = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            _builder(subject, key.public_key())
            .issuer_name(self._name)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(signs=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        names: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address(address)) for address in addresses
        ]
        names += [x509.DNSName(host) for host in hosts]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        return Issued(
            certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


def _builder(subject: x509.Name, public: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
    )


def _usage(*, signs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not signs,
        key_cert_sign=signs,
        crl_sign=signs,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class TLSServer:
    """A running server with TLS on, and the files a client needs for it."""

    server: PostgresServer
    ca: Path
    """The authority that signed the server's certificate and the client's."""
    other_ca: Path
    """An authority that signed neither."""
    client_cert: Path
    """A client certificate for `CERT_USER`."""
    client_key: Path

    def url(self, database: str = "postgres", *, host: str = HOST, user: str = "") -> str:
        """A URL of the server, by *host* (an address or a name), as *user*."""
        url = make_url(self.server.url(database)).set(host=host, username=user or SUPERUSER)
        return url.render_as_string(hide_password=False)


@contextlib.contextmanager
def tls_server(directory: Path) -> Iterator[TLSServer]:
    """A throwaway server with TLS on; the client's files are written to *directory*."""
    authority = Authority("dbrouter test authority")
    other = Authority("dbrouter other authority")
    ca = directory / "ca.crt"
    ca.write_bytes(authority.pem)
    other_ca = directory / "other-ca.crt"
    other_ca.write_bytes(other.pem)
    client_cert, client_key = authority.issue(CERT_USER, client=True).write(directory, "client")
    with running_server() as server:
        _enable_tls(server, authority)
        yield TLSServer(server, ca, other_ca, client_cert, client_key)


def _enable_tls(server: PostgresServer, authority: Authority) -> None:
    data = server.data_dir
    owner = data.stat()
    issued = authority.issue("dbrouter test server", addresses=(HOST,))
    cert_path, key_path = issued.write(data, "server")
    (data / "root.crt").write_bytes(authority.pem)
    for path in (cert_path, key_path, data / "root.crt"):
        # The server refuses a key file that others may read or that it does not own.
        os.chown(path, owner.st_uid, owner.st_gid)
    hba = data / "pg_hba.conf"
    hba.write_text(f"hostssl all {CERT_USER} {HOST}/32 cert\n" + hba.read_text())
    server.execute(
        f"CREATE ROLE {CERT_USER} LOGIN;\n"
        "ALTER SYSTEM SET ssl = on;\n"
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt';\n"
        "ALTER SYSTEM SET ssl_key_file = 'server.key';\n"
        "ALTER SYSTEM SET ssl_ca_file = 'root.crt';\n"
    )
    server.restart()
    if server.query("SHOW ssl") != [("on",)]:
        raise RuntimeError(f"TLS did not come on; see {server.log_path}")
