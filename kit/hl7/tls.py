"""TLS for the MLLP listener: its server context, and client certificates where a CA is trusted."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from kit.errors import ConfigError

__all__ = ["require_client_certs", "server_tls_context"]

log = logging.getLogger("kit.hl7.mllp")


def server_tls_context(certfile: str | Path, keyfile: str | Path | None = None,
                       cafile: str | Path | None = None) -> ssl.SSLContext:
    """A server TLS context for :class:`MLLPListener` (TLS 1.2 or newer).

    Parameters
    ----------
    certfile, keyfile : str or Path
        The listener's certificate chain and private key (PEM).
    cafile : str or Path, optional
        CA bundle of the clients: when given, every client must present a
        certificate signed by it (``CERT_REQUIRED``, mutual TLS).

    Raises
    ------
    kit.errors.ConfigError
        A file cannot be read or does not hold what it should.
    """
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                         cafile=str(cafile) if cafile is not None else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(certfile), str(keyfile) if keyfile is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("hl7.tls_cert" if cafile is None else "hl7.tls_ca",
                          f"cannot load TLS files: {exc}") from exc
    ctx.verify_mode = ssl.CERT_REQUIRED if cafile is not None else ssl.CERT_NONE
    return ctx


def require_client_certs(ctx: ssl.SSLContext) -> None:
    """A server context that trusts CA certificates but verifies nobody: require client certificates."""
    if ctx.verify_mode == ssl.CERT_NONE and ctx.cert_store_stats().get("x509_ca", 0) > 0:
        log.info("MLLP TLS: CA certificates are loaded, so client certificates are required")
        ctx.verify_mode = ssl.CERT_REQUIRED
