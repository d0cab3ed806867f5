"""Writes a self-signed certificate and its RSA key, both PEM, for OPC UA clients in tests.

Usage: make_certificate.py --uri URI --name NAME --out DIR
Writes DIR/cert.pem and DIR/key.pem (the certificate carries URI as its application URI).
"""

import argparse
import asyncio
import socket
from pathlib import Path

from asyncua.crypto import uacrypto
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uri", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key, der = out / "key.pem", out / "cert.der"
    await setup_self_signed_certificate(
        key,
        der,
        args.uri,
        socket.gethostname(),
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        {"commonName": args.name, "organizationName": "dowser tests"},
    )
    pem = (await uacrypto.load_certificate(str(der))).public_bytes(Encoding.PEM)
    (out / "cert.pem").write_bytes(pem)
    der.unlink()


if __name__ == "__main__":
    asyncio.run(main())
