"""A Modbus RTU bus behind an async interface: a blocking pyserial port owned by a worker thread of its own.

Used for every serial URL roost accepts: a device path (`/dev/ttyUSB0`), and ser2net's `socket://host:port` (raw
TCP) and `rfc2217://host:port` (telnet with serial-port control). pyserial's RFC 2217 client cannot set a write
timeout, which asyncio serial transports need (`NotImplementedError: write_timeout is currently not supported`),
so the port stays blocking and one thread does all its I/O; requests queue for that thread, which is also what
keeps one frame at a time on the bus. pymodbus supplies the RTU framing (CRC, frame sizes) and the PDU classes.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from roost.errors import SourceError
from roost.sources.modbus import BadFrame, LinkLost, NoResponse

if TYPE_CHECKING:
    from pymodbus.pdu import ModbusPDU

_PARITY = {"none": "N", "even": "E", "odd": "O"}


def serial_url(url: str) -> str:
    """The URL as pyserial opens it: `rfc2217://` gets `ign_set_control`.

    ser2net never acknowledges SET_CONTROL (modem lines) for a port without them, such as a pty, and pyserial
    then gives up opening; Modbus RTU uses no modem lines, so not waiting for that answer costs nothing.
    """
    if url.startswith("rfc2217://") and "ign_set_control" not in url:
        return url + ("&" if "?" in url else "?") + "ign_set_control"
    return url


class SerialRtuLink:
    """`await link.execute(request)` sends one RTU frame and returns the decoded answer, or raises
    NoResponse (nothing within the timeout), BadFrame (garbled, truncated, another unit's) or LinkLost."""

    def __init__(self, url: str, *, baudrate: int, bytesize: int, parity: str, stopbits: int, timeout_s: float):
        from pymodbus.framer import FramerRTU
        from pymodbus.pdu import DecodePDU

        self.url = url
        self._options = dict(baudrate=baudrate, bytesize=bytesize, parity=_PARITY[parity], stopbits=stopbits)
        self.timeout_s = timeout_s
        self._decoder = DecodePDU(False)
        self._framer = FramerRTU(self._decoder)
        self._port = None
        self._thread: ThreadPoolExecutor | None = None

    async def connect(self) -> None:
        import serial

        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modbus-serial")
        try:
            self._port = await self._in_thread(self._open)
        except (serial.SerialException, OSError, ValueError) as err:
            self._thread.shutdown(wait=False)
            self._thread = None
            hint = ("is the adapter plugged in, and may roost use it (dialout group)?" if self.url.startswith("/")
                    else "is ser2net running there, and is the port right?")
            raise SourceError(f"{self.url}: cannot open ({err}) — {hint}") from None

    def _open(self):
        import serial

        # A device path is locked so that a second program cannot talk over roost on the same bus.
        return serial.serial_for_url(
            serial_url(self.url), timeout=self.timeout_s, exclusive=self.url.startswith("/") or None, **self._options
        )

    async def execute(self, request: ModbusPDU) -> ModbusPDU:
        if self._port is None:
            raise LinkLost("the port is closed")
        frame = self._framer.buildFrame(request)
        try:
            return await asyncio.wait_for(self._in_thread(self._transact, frame, request.dev_id), self._stuck_s)
        except TimeoutError:
            raise LinkLost(f"the port has not finished a request in {self._stuck_s:g} s (a write hangs?)") from None

    @property
    def _stuck_s(self) -> float:
        # Reads end by the port's timeout (head and rest: twice), but a blocking write has none (RFC 2217 cannot
        # have one), and a network port whose peer vanished can hang in it.
        return 2 * self.timeout_s + 5

    async def close(self) -> None:
        thread, port = self._thread, self._port
        self._thread = self._port = None
        if thread is None:
            return
        try:
            if port is not None:
                # In the port's thread, after a request in flight; from here if that thread is stuck.
                closing = asyncio.get_running_loop().run_in_executor(thread, port.close)
                try:
                    await asyncio.wait_for(closing, self._stuck_s)
                except TimeoutError:
                    port.close()
        finally:
            thread.shutdown(wait=False)

    async def _in_thread(self, function, *args):
        assert self._thread is not None, "connect() first"
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    def _transact(self, frame: bytes, unit: int) -> ModbusPDU:
        """Send a frame and read one answer (runs in the port's thread)."""
        import serial
        from pymodbus.exceptions import ModbusException

        port = self._port
        if port is None:
            raise LinkLost("the port is closed")
        try:
            self._discard_input(port)  # a late answer to an earlier, timed-out request
            port.write(frame)
            # Unit, function code and byte count say how long the rest is; each read waits at most the timeout.
            head = port.read(3)
            if not head:
                raise NoResponse()
            if len(head) < 3:
                raise BadFrame("incomplete_frame", f"only {len(head)} byte(s) of an answer arrived")
            answer_class = self._decoder.lookupPduClass(head)
            if answer_class is None:
                self._discard_input(port)
                raise BadFrame("bad_frame", f"an answer starting {head.hex(' ')} is not Modbus RTU (wrong baud rate?)")
            try:
                size = answer_class.calculateRtuFrameSize(head)
            except IndexError:  # a function whose size is further in (0x18, read FIFO): roost never asks for one
                self._discard_input(port)
                raise BadFrame("bad_frame", f"an answer starting {head.hex(' ')} is not one roost asked for") from None
            data = head + port.read(size - 3)
        except serial.SerialException as err:
            raise LinkLost(f"the port failed ({err})") from None
        if len(data) < size:
            raise BadFrame("incomplete_frame", f"{len(data)} of {size} bytes of an answer arrived")
        try:
            _used, answer = self._framer.handleFrame(data, unit, 0)
        except ModbusException as err:
            raise BadFrame("bad_frame", f"undecodable answer ({err})") from None
        if answer is None:
            which = f"unit {data[0]} answered instead" if data[0] != unit else "CRC mismatch"
            raise BadFrame("bad_frame", f"{which} ({data.hex(' ')})")
        return answer

    @staticmethod
    def _discard_input(port) -> None:
        from serial import rfc2217

        if isinstance(port, rfc2217.Serial):
            # Its reset_input_buffer() asks the server to purge and waits for the reply; dropping what already
            # arrived here is all that is needed.
            while waiting := port.in_waiting:
                port.read(waiting)
        else:
            port.reset_input_buffer()
