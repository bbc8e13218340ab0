"""Motion-JPEG as a UVC camera sends it in MJPG mode: whole JPEG images, back to back.

Pure: bytes in, JPEG images out, no I/O. The stream reader (``source.StreamSource``) and
the camera emulator (``emulator.py``, the device side) both speak it.

Images are delimited by walking the JPEG marker structure rather than by searching for
the end-of-image bytes: an EXIF thumbnail or a Huffman table may contain ``FF D9``, while
inside entropy-coded data a ``FF`` is always stuffed (``FF 00``) or a restart marker, so a
marker walk finds the real end. A stream joined mid-image (a reader that reopened while
the writer was half-way through a frame) is resynchronised at the next start-of-image;
the bytes skipped are counted, not fatal.
"""
from __future__ import annotations

SOI = b"\xff\xd8"
_EOI, _SOS, _TEM = 0xD9, 0xDA, 0x01
_RST = range(0xD0, 0xD8)
MAX_IMAGE_BYTES = 16 * 1024 * 1024   # larger than any 4K MJPEG frame; beyond it, resync


class MjpegSplitter:
    """Feed stream bytes as they arrive; get back each complete JPEG image once."""

    def __init__(self, max_image_bytes: int = MAX_IMAGE_BYTES):
        self.max_image_bytes = max_image_bytes
        self.skipped_bytes = 0      # bytes outside any image (joined mid-frame, line noise)
        self.oversized = 0          # images dropped for exceeding max_image_bytes
        self._buf = bytearray()
        self._pos = 0               # where the marker walk resumes in the current image
        self._in_scan = False       # the walk is inside entropy-coded data

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        images = []
        while True:
            image = self._next_image()
            if image is None:
                return images
            images.append(image)

    def _next_image(self) -> bytes | None:
        buf = self._buf
        if self._pos == 0 and not self._sync():
            return None
        while True:
            if self._pos > self.max_image_bytes:
                self.oversized += 1
                self._drop(2)          # past this SOI; look for the next one
                if not self._sync():
                    return None
                continue
            if self._in_scan:
                end = self._scan_end(self._pos)
                if end is None:
                    if self._pos > self.max_image_bytes:
                        continue       # dropped at the top of the loop
                    return None
                self._pos, self._in_scan = end, False
            if len(buf) < self._pos + 2:
                return None
            if buf[self._pos] != 0xFF:            # not a marker where one must be: corrupt
                self.skipped_bytes += self._pos
                self._drop(self._pos)
                if not self._sync():
                    return None
                continue
            marker = buf[self._pos + 1]
            if marker == 0xFF:                    # fill byte before a marker
                self._pos += 1
                continue
            if marker == SOI[1]:                  # a new image before this one ended: truncated
                self.skipped_bytes += self._pos
                self._drop(self._pos)
                self._sync()
                continue
            if marker == _EOI:
                end = self._pos + 2
                image = bytes(buf[:end])
                self._drop(end)
                return image
            if marker in _RST or marker == _TEM:  # markers without a length
                self._pos += 2
                continue
            if len(buf) < self._pos + 4:
                return None
            length = (buf[self._pos + 2] << 8) | buf[self._pos + 3]
            if length < 2:
                self._drop(2)
                if not self._sync():
                    return None
                continue
            if self._pos + 2 + length > self.max_image_bytes:
                self._pos = self.max_image_bytes + 1    # dropped at the top of the loop
                continue
            if len(buf) < self._pos + 2 + length:
                return None
            self._pos += 2 + length
            if marker == _SOS:
                self._in_scan = True

    def _sync(self) -> bool:
        """Drop everything before the next start-of-image; False until one arrives."""
        start = self._buf.find(SOI)
        if start < 0:
            keep = 1 if self._buf.endswith(b"\xff") else 0   # half an SOI may follow
            self.skipped_bytes += len(self._buf) - keep
            del self._buf[:len(self._buf) - keep]
            self._pos = 0
            return False
        self.skipped_bytes += start
        del self._buf[:start]
        self._pos, self._in_scan = 2, False
        return True

    def _scan_end(self, pos: int) -> int | None:
        """The offset of the marker that ends entropy-coded data, or None if not here yet."""
        buf = self._buf
        while True:
            pos = buf.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= len(buf):
                # Resume from the last complete byte next time; keep a trailing FF in view.
                self._pos = len(buf) - 1 if pos >= 0 else len(buf)
                return None
            following = buf[pos + 1]
            if following == 0x00 or following in _RST:
                pos += 2
                continue
            return pos

    def _drop(self, count: int) -> None:
        del self._buf[:count]
        self._pos, self._in_scan = 0, False
