"""An independent Modbus TCP server (pymodbus) with device identification, for dowser's tests.

Usage: pymodbus_server.py --port PORT --units 1,2 --vendor V --product P --revision R
       pymodbus_server.py --serial /dev/pts/N --baud 115200 --parity E --units 1,2 ...
Serves Modbus TCP on 127.0.0.1:PORT, or Modbus RTU on a serial port (one end of a pty
pair in the tests), until killed.
"""

import argparse
import asyncio

from pymodbus import ModbusDeviceIdentification
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--serial", default="")
    parser.add_argument("--baud", type=int, default=19200)
    parser.add_argument("--parity", default="N")
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
    if args.serial:
        server = ModbusSerialServer(
            context,
            framer=FramerType.RTU,
            identity=identity,
            port=args.serial,
            baudrate=args.baud,
            parity=args.parity,
        )
    else:
        server = ModbusTcpServer(context, identity=identity, address=(args.host, args.port))
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
