#!/usr/bin/env python3
"""pymodbus server for parkguard's Modbus tests: the independent peer.

Usage: modbus_server.py LAYOUT.json

The layout file (written by the Rust test) says how to serve and what:

    {
      "transport": "tcp",            # or "rtu" (serial, e.g. one end of a socat PTY pair)
      "framer": "socket",            # tcp only: "rtu" = RTU frames over TCP (serial server)
      "host": "127.0.0.1", "port": 15020,        # tcp
      "serial": "/tmp/x/pty-a", "baud": 19200, "parity": "N", "bytesize": 8, "stopbits": 1,
      "devices": [
        {
          "unit": 1,
          "size": 200,                # registers per table (addresses 0..size-1); beyond → illegal address
          "holding": {"0": 4660},     # raw registers by address
          "input": {},
          "coils": {"3": true},
          "discrete": {},
          "values": [                 # typed values, encoded HERE (Python struct), not by parkguard
            {"table": "holding", "address": 10, "type": "f32", "order": "CDAB", "value": 12.5}
          ],
          "fail": [150]               # reads touching these addresses answer exception 4 (device failure)
        }
      ]
    }

Unit ids not listed get no answer at all (ignore_missing_devices), as on a real bus. The
server prints "READY" on stdout once it listens. Binds only where told (tests: 127.0.0.1).
"""

import asyncio
import json
import struct
import sys

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FORMATS = {
    "u16": ">H",
    "i16": ">h",
    "u32": ">I",
    "i32": ">i",
    "f32": ">f",
    "f64": ">d",
}


def encode(typ, order, value):
    """Big-endian bytes of the value, then rearranged per byte/word order.

    The order letters name the bytes of the big-endian value (A = most significant) in the
    order they appear on the wire, 16-bit registers in sequence. For 64-bit values the
    same rule applies word-wise: CDAB reverses the words, BADC swaps bytes in each word,
    DCBA does both (fully little-endian).
    """
    fmt = FORMATS[typ]
    if typ in ("f32", "f64"):
        raw = struct.pack(fmt, float(value))
    else:
        raw = struct.pack(fmt, int(value))
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if order in ("CDAB", "DCBA"):
        words = list(reversed(words))
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def table(dev, name, size, bits):
    regs = [False] * size if bits else [0] * size
    for addr, v in dev.get(name, {}).items():
        regs[int(addr)] = bool(v) if bits else int(v) & 0xFFFF
    return regs


def build_device(dev):
    size = int(dev.get("size", 200))
    holding = table(dev, "holding", size, False)
    inputs = table(dev, "input", size, False)
    coils = table(dev, "coils", size, True)
    discrete = table(dev, "discrete", size, True)
    for v in dev.get("values", []):
        regs = encode(v["type"], v.get("order", "ABCD"), v["value"])
        target = holding if v["table"] == "holding" else inputs
        for i, r in enumerate(regs):
            target[int(v["address"]) + i] = r
    fail = set(int(a) for a in dev.get("fail", []))

    async def action(_fc, _start, address, count, _registers, _values):
        if any(a in fail for a in range(address, address + count)):
            return ExcCodes.DEVICE_FAILURE
        return None

    bits_size = ((size + 15) // 16) * 16
    coils += [False] * (bits_size - size)
    discrete += [False] * (bits_size - size)
    return SimDevice(
        id=int(dev["unit"]),
        simdata=(
            [SimData(0, values=coils, datatype=DataType.BITS)],
            [SimData(0, values=discrete, datatype=DataType.BITS)],
            [SimData(0, values=holding, datatype=DataType.REGISTERS)],
            [SimData(0, values=inputs, datatype=DataType.REGISTERS)],
        ),
        action=action,
    )


async def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        layout = json.load(f)
    devices = [build_device(d) for d in layout["devices"]]
    units = {int(d["unit"]) for d in layout["devices"]}

    def trace_pdu(sending, pdu):
        # pymodbus 3.16 answers unknown unit ids with exception 4 (its SimCore falls back
        # to device 0, ignore_missing_devices notwithstanding); a real bus stays silent, so
        # drop requests for units we do not serve once framed (dropping raw bytes in
        # trace_packet would leave them in pymodbus' buffer and wedge the server).
        if sending or pdu is None:
            return pdu
        return pdu if pdu.dev_id in units else None

    if layout.get("transport", "tcp") == "tcp":
        server = ModbusTcpServer(
            devices,
            address=(layout.get("host", "127.0.0.1"), int(layout["port"])),
            framer=FramerType.RTU if layout.get("framer") == "rtu" else FramerType.SOCKET,
            ignore_missing_devices=True,
            trace_pdu=trace_pdu,
        )
    else:
        server = ModbusSerialServer(
            devices,
            port=layout["serial"],
            baudrate=int(layout.get("baud", 19200)),
            parity=layout.get("parity", "N"),
            bytesize=int(layout.get("bytesize", 8)),
            stopbits=int(layout.get("stopbits", 1)),
            ignore_missing_devices=True,
            trace_pdu=trace_pdu,
        )
    task = asyncio.create_task(server.serve_forever())
    # Let serve_forever open its listener / serial port before saying so.
    await asyncio.sleep(0.3)
    print("READY", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main())
