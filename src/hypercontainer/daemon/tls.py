"""hyperd's TLS material for its TCP listener: `hyperd tls init DIR` makes it, serve() loads it.

A set is three files: ca.pem (the certificate clients trust: `hyperctl --tls-ca`), server.pem and server-key.pem
(0600). init() makes a CA, signs one server certificate with it (the host's names and addresses, plus those asked
for) and throws the CA's key away: that CA vouches for this server and nothing else, and a new name means a new set
(--force). Bring your own instead by putting server.pem (its chain after it) and server-key.pem in the directory."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import click

from ..errors import HCError

CA, CERT, KEY = "ca.pem", "server.pem", "server-key.pem"
DEFAULT_DAYS = 825
DEFAULT_PORT = 2376  # docker's TLS port: what the examples say
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TLSError(HCError):
    """A TLS set that is missing, unreadable or would be overwritten."""


@dataclass(frozen=True)
class Names:
    """What a server certificate vouches for."""

    dns: tuple[str, ...]
    ips: tuple[Address, ...]


def init_hint(directory: Path) -> str:
    return f"run `hyperd tls init {directory}` (or put server.pem and server-key.pem there)"


def host_names(extra: Iterable[str] = ()) -> Names:
    """The host's names and addresses (loopback included, link-local left out) and `extra` (names or addresses)."""
    dns: list[str] = []
    ips: list[Address] = [ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")]
    for name in (socket.gethostname(), socket.getfqdn(), "localhost", *extra):
        try:
            ips.append(ipaddress.ip_address(name.strip("[]")))
        except ValueError:
            if name:
                dns.append(name.lower())
    ips += [a for a in _interface_addresses() if not a.is_loopback and not a.is_link_local]
    return Names(tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips)))


def _interface_addresses() -> list[Address]:
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        return [ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) for a in ip.get_addr()
                if a.get_attr("IFA_ADDRESS")]


def init(directory: Path, names: Names, days: int = DEFAULT_DAYS, force: bool = False) -> None:
    """Writes a CA certificate and a server key and certificate it signed into `directory` (made 0700)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    present = [f for f in (CA, CERT, KEY) if (directory / f).exists()]
    if present and not force:
        raise TLSError(f"{directory} already holds {', '.join(present)}: --force replaces the set (clients then "
                       f"need the new {CA})")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # a client whose clock is a little behind
    until = now + dt.timedelta(days=days)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    host = names.dns[0] if names.dns else "hyperd"
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hyperd CA ({host})")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names.dns]
    sans += [x509.IPAddress(a) for a in names.ips]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(directory / KEY, key_pem, 0o600)
    _write(directory / CERT, cert.public_bytes(pem), 0o644)
    _write(directory / CA, ca.public_bytes(pem), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        tmp.rename(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def server_context(directory: Path) -> ssl.SSLContext:
    """The listener's context from `directory`'s server.pem and server-key.pem (TLS 1.2 and later, no client
    certificates); a TLSError says what is wrong and how to make a set."""
    cert, key = directory / CERT, directory / KEY
    missing = [p.name for p in (cert, key) if not p.is_file()]
    if missing:
        raise TLSError(f"{directory} has no {' or '.join(missing)}: {init_hint(directory)}")
    if key.stat().st_mode & 0o077:
        raise TLSError(f"{key} may be read by others than its owner: chmod 600 it")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise TLSError(f"{directory}: cannot use {CERT} with {KEY} ({e}): {init_hint(directory)}") from None
    return ctx


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


def _san(value: str) -> str:
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(value.strip("[]")))
    if not _DNS_NAME.match(value):
        raise click.BadParameter(f"{value!r} is neither a host name nor an IP address", param_hint="--san")
    return value


@click.group("tls")
def tls_command() -> None:
    """TLS material for --listen."""


@tls_command.command("init")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--san", "sans", metavar="NAME|IP", multiple=True,
              help="Another name or address the server certificate is for (repeatable); the host's own names and "
                   "addresses always are.")
@click.option("--days", type=click.IntRange(1, 3650), default=DEFAULT_DAYS, show_default=True,
              help="How long the certificates are valid.")
@click.option("--force", is_flag=True, help="Replace a set DIR already holds.")
def tls_init(directory: Path, sans: tuple[str, ...], days: int, force: bool) -> None:
    """Make DIR's TLS set: a CA certificate (ca.pem, for clients: hyperctl --tls-ca), a server certificate it
    signed (server.pem) and its key (server-key.pem, 0600). The CA's key is not kept."""
    names = host_names(_san(s) for s in sans)
    try:
        init(directory, names, days, force)
    except TLSError as e:
        raise click.ClickException(e.message) from None
    click.echo(f"wrote {directory / CA}, {directory / CERT} and {directory / KEY}")
    click.echo(f"the server certificate names {', '.join([*names.dns, *map(str, names.ips)])}")
    click.echo(f"serve: hyperd --listen tcp://0.0.0.0:{DEFAULT_PORT} --tls-dir {directory}")
    click.echo(f"connect (with a copy of {CA}): hyperctl --host tcp://{names.dns[0] if names.dns else '127.0.0.1'}:"
               f"{DEFAULT_PORT} --tls-ca {CA} ps")
