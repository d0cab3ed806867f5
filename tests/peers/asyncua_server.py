"""An independent OPC UA server (asyncua) for dowser's tests.

Usage: asyncua_server.py --port PORT --name NAME --uri URI [--product URI]
                         [--policies None,Basic256Sha256_SignAndEncrypt,...]
                         [--register-to opc.tcp://LDS/]
                         [--build-info MANUFACTURER,PRODUCT,VERSION,BUILD]
                         [--users NAME:PASSWORD,...] [--user-certificates A.pem,...]
                         [--certificate-out SERVER.pem]
Prints "ready" once it listens and serves until killed. Secure policies get a self-signed
certificate generated at start (--certificate-out writes it, PEM, for clients to trust). With
--register-to it registers itself with a discovery server (another asyncua server) every few
seconds, as real servers do with an LDS.

With --users and/or --user-certificates the server takes only those user identities
(UserName and X509 tokens; no anonymous sessions).

Also: make_certificate.py writes a certificate and key for clients.
"""

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from datetime import datetime, timezone

from asyncua import Server, ua
from asyncua.crypto import uacrypto
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID


class Users:
    """Takes the listed user names with their passwords and the listed user certificates."""

    def __init__(self, passwords: dict[str, str], certificates: list[bytes]) -> None:
        self.passwords = passwords
        self.certificates = certificates

    def get_user(self, iserver, username=None, password=None, certificate=None):
        # asyncua passes the channel's client certificate along with a user name token.
        if username is not None:
            if self.passwords.get(username) == password:
                return User(role=UserRole.User, name=username)
            return None
        if certificate:
            der = certificate if isinstance(certificate, bytes) else uacrypto.der_from_x509(certificate)
            return User(role=UserRole.User, name="cert") if der in self.certificates else None
        return None

POLICIES = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Aes128Sha256RsaOaep_SignAndEncrypt": ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    "Aes256Sha256RsaPss_SignAndEncrypt": ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--uri", required=True)
    parser.add_argument("--product", default="urn:asyncua:peer")
    parser.add_argument("--policies", default="None")
    parser.add_argument("--register-to", default="")
    parser.add_argument("--build-info", default="")
    parser.add_argument("--users", default="")
    parser.add_argument("--user-certificates", default="")
    parser.add_argument("--certificate-out", default="")
    args = parser.parse_args()

    passwords = dict(u.split(":", 1) for u in args.users.split(",") if u)
    user_certs = [
        uacrypto.der_from_x509(await uacrypto.load_certificate(p)) for p in args.user_certificates.split(",") if p
    ]
    users = Users(passwords, user_certs) if passwords or user_certs else None
    server = Server(user_manager=users)
    await server.init()
    if users is not None:
        tokens = []
        if passwords:
            tokens.append(ua.UserNameIdentityToken)
        if user_certs:
            tokens.append(ua.X509IdentityToken)
        server.set_identity_tokens(tokens)
    if args.build_info:
        manufacturer, product, version, build = args.build_info.split(",")
        await server.set_build_info(
            args.product, manufacturer, product, version, build, datetime(2026, 1, 1, tzinfo=timezone.utc)
        )

    server.set_endpoint(f"opc.tcp://{args.host}:{args.port}/peer/")
    server.set_server_name(args.name)
    await server.set_application_uri(args.uri)
    server.product_uri = args.product
    policies = [POLICIES[p] for p in args.policies.split(",")]
    server.set_security_policy(policies)
    if any(p != ua.SecurityPolicyType.NoSecurity for p in policies):
        # Loaded into memory, so the files go at once: the server is killed, not stopped.
        with tempfile.TemporaryDirectory(prefix="asyncua-peer-") as pki:
            key, cert = Path(pki) / "key.pem", Path(pki) / "cert.der"
            await setup_self_signed_certificate(
                key,
                cert,
                args.uri,
                # The name clients connect by, as a well-set-up server's certificate has it.
                args.host,
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                {"commonName": args.name, "organizationName": "dowser tests"},
            )
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            if args.certificate_out:
                pem = (await uacrypto.load_certificate(str(cert))).public_bytes(Encoding.PEM)
                Path(args.certificate_out).write_bytes(pem)

    async with server:
        if args.register_to:
            await server.register_to_discovery(args.register_to, period=5)
        print("ready", flush=True)
        while True:
            await asyncio.sleep(3600)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
