"""An independent OPC UA server (asyncua) for dowser's tests.

Usage: asyncua_server.py --port PORT --name NAME --uri URI [--product URI]
                         [--policies None,Basic256Sha256_SignAndEncrypt,...]
                         [--register-to opc.tcp://LDS/]
Prints "ready" once it listens and serves until killed. Secure policies get a self-signed
certificate generated at start. With --register-to it registers itself with a discovery
server (another asyncua server) every few seconds, as real servers do with an LDS.
"""

import argparse
import asyncio
import socket
import sys
import tempfile
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

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
    args = parser.parse_args()

    server = Server()
    await server.init()
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
                socket.gethostname(),
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                {"commonName": args.name, "organizationName": "dowser tests"},
            )
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))

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
