"""An independent BACnet/IP device (bacpypes3) for dowser's BACnet tests.

Usage: bacpypes3_device.py --name NAME --instance N --address IP/PREFIX
                           [--model NAME] [--location TEXT] [--firmware REV]
It answers Who-Is with I-Am and ReadProperty on its Device object as bacpypes3 does, prints
"ready" once it listens, and serves until killed.
"""

import asyncio

from bacpypes3.app import Application
from bacpypes3.argparse import SimpleArgumentParser


async def main() -> None:
    parser = SimpleArgumentParser()
    parser.add_argument("--model", default="bacpypes3 peer")
    parser.add_argument("--location", default="")
    parser.add_argument("--firmware", default="1.0")
    args = parser.parse_args()
    app = Application.from_args(args)
    device = app.device_object
    device.modelName = args.model
    device.firmwareRevision = args.firmware
    device.applicationSoftwareVersion = "bacpypes3"
    if args.location:
        device.location = args.location
    print("ready", flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
