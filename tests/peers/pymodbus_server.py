"""An independent Modbus TCP server (pymodbus) with device identification, for dowser's tests.

Usage: pymodbus_server.py --port PORT --units 1,2 --vendor V --product P --revision R
Serves until killed.
"""

import argparse
import asyncio

from pymodbus import ModbusDeviceIdentification
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTcpServer


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--units", default="1")
    parser.add_argument("--vendor", default="pymodbus")
    parser.add_argument("--product", default="PM")
    parser.add_argument("--revision", default="3")
    parser.add_argument("--product-name", default="")
    args = parser.parse_args()

    devices = {
        int(u): ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, [17] * 100))
        for u in args.units.split(",")
    }
    context = ModbusServerContext(devices=devices, single=False)
    identity = ModbusDeviceIdentification(
        info_name={
            "VendorName": args.vendor,
            "ProductCode": args.product,
            "MajorMinorRevision": args.revision,
            "ProductName": args.product_name,
        }
    )
    server = ModbusTcpServer(context, identity=identity, address=(args.host, args.port))
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
