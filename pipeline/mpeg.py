"""MPEG audio (MP3) frame headers: how many samples a file really holds, read without decoding it.

libsndfile (through libmpg123) reports an MP3's length from its Xing/Info or VBRI header when it
has one, and otherwise estimates it from the file's size and its first frame's bitrate, and it
never returns more samples than it reported. A VBR file without such a header whose first frames
are dense (a loud start, 320 kbps) is estimated far too short, and libsndfile's decode silently
stops there: 155,724 of 972,288 samples in a test file. :func:`mpeg_frames` counts the frames
themselves (a hop from header to header, about 10 ms for a 4-minute file), so a caller can tell
when libsndfile's length cannot be trusted and how long the file can be at most.

Frame header layout and tables: ISO/IEC 11172-3 and 13818-3 (MPEG-1 and MPEG-2 audio); MPEG 2.5
is the common extension for 8-12 kHz; the Xing/Info and VBRI headers are the LAME and Fraunhofer
conventions (frame count big-endian after the tag and, for Xing, its flags).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

# bitrates in kbit/s by (MPEG-1?, layer) and index 1..14 (0 is "free format", 15 is invalid)
_BITRATES = {
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
# sample rates by version bits (0: MPEG 2.5, 2: MPEG-2, 3: MPEG-1) and index 0..2
_RATES = {0: (11025, 12000, 8000), 2: (22050, 24000, 16000), 3: (44100, 48000, 32000)}
#: bytes read to find the first frame after any ID3v2 tag (a file with more junk before its audio is not scanned)
_SEARCH = 1 << 16
#: a Xing header's byte count within this share of the file's audio bytes: the header describes the whole file
_BYTES_SLACK = 0.01


@dataclass(frozen=True)
class Frame:
    """One frame header: what a decoder needs to find the next one."""

    rate: int
    samples: int  # per frame: 384 (layer I), 1152 (layer II; layer III of MPEG-1), 576 (layer III of MPEG-2/2.5)
    size: int  # bytes, header included
    mpeg1: bool
    layer: int
    mono: bool
    crc: bool


def parse_header(word: int) -> Frame | None:
    """The frame a 32-bit header word describes, or None when it is not a valid MPEG audio header."""
    if word >> 21 != 0x7FF:
        return None
    version, layer_bits = (word >> 19) & 3, (word >> 17) & 3
    bitrate_index, rate_index, emphasis = (word >> 12) & 15, (word >> 10) & 3, word & 3
    if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3 or emphasis == 2:
        return None  # reserved values; free-format bitrates cannot be hopped over
    mpeg1, layer = version == 3, 4 - layer_bits
    rate = _RATES[version][rate_index]
    bitrate = _BITRATES[(mpeg1, layer)][bitrate_index - 1] * 1000
    padding = (word >> 9) & 1
    if layer == 1:
        size, samples = (12 * bitrate // rate + padding) * 4, 384
    elif layer == 2 or mpeg1:
        size, samples = 144 * bitrate // rate + padding, 1152
    else:
        size, samples = 72 * bitrate // rate + padding, 576
    return Frame(rate, samples, size, mpeg1, layer, (word >> 6) & 3 == 3, not (word >> 16) & 1)


def _id3v2_end(head: bytes) -> int:
    """Bytes taken by the ID3v2 tags at the start (several may follow each other)."""
    end = 0
    while head[end : end + 3] == b"ID3" and len(head) >= end + 10:
        size = 0
        for byte in head[end + 6 : end + 10]:
            size = (size << 7) | (byte & 0x7F)  # a "synchsafe" integer: 7 bits per byte
        end += 10 + size + (10 if head[end + 5] & 0x10 else 0)  # a footer repeats the header
    return end


def _first_frame(data: bytes, start: int) -> tuple[int, Frame] | None:
    """The first header from ``start`` on whose frame is followed by another header of the same stream
    (a lone 0xFFE pattern inside a tag or junk is not a frame)."""
    position = data.find(b"\xff", start)
    while 0 <= position <= len(data) - 4:
        frame = parse_header(struct.unpack_from(">I", data, position)[0])
        if frame is not None:
            following = position + frame.size
            if following + 4 > len(data):
                return position, frame  # a single-frame file
            other = parse_header(struct.unpack_from(">I", data, following)[0])
            if other is not None and (other.rate, other.layer, other.mpeg1) == (frame.rate, frame.layer, frame.mpeg1):
                return position, frame
        position = data.find(b"\xff", position + 1)
    return None


@dataclass(frozen=True)
class LengthHeader:
    """A Xing/Info or VBRI header: the encoder's own frame count (and byte count, when it wrote one)."""

    frames: int
    bytes: int | None


def _length_header(data: bytes, position: int, frame: Frame) -> LengthHeader | None:
    side = (32 if not frame.mono else 17) if frame.mpeg1 else (17 if not frame.mono else 9)
    xing = position + 4 + (2 if frame.crc else 0) + side
    if data[xing : xing + 4] in (b"Xing", b"Info") and len(data) >= xing + 16:
        flags = struct.unpack_from(">I", data, xing + 4)[0]
        if flags & 1:
            offset = xing + 8
            frames = struct.unpack_from(">I", data, offset)[0]
            size = struct.unpack_from(">I", data, offset + 4)[0] if flags & 2 else None
            return LengthHeader(frames, size)
    vbri = position + 36
    if data[vbri : vbri + 4] == b"VBRI" and len(data) >= vbri + 18:
        size, frames = struct.unpack_from(">II", data, vbri + 10)
        return LengthHeader(frames, size)
    return None


@dataclass(frozen=True)
class MpegLength:
    """What an MP3's frames say of its length, beside the length libsndfile reports.

    ``header``: the file has a Xing/Info or VBRI header (libsndfile's length is the encoder's count, not an
    estimate). ``samples``: every frame counted (None when the file was not scanned: its header covers it).
    """

    reported: int
    header: bool
    samples: int | None = None

    @property
    def beyond_reported(self) -> bool:
        """libsndfile would stop before the last frame: its length is short of what the file holds."""
        return self.samples is not None and self.samples > self.reported

    @property
    def most(self) -> int:
        """The most samples any decoder returns for this file: its frames' samples where they were counted (a
        decoder returns no more; libsndfile's estimate can be larger, counting an ID3 tag as audio), else the
        header's count."""
        return self.samples if self.samples is not None else self.reported

    @property
    def reason(self) -> str:
        return "its Xing/VBRI header covers only part of the file" if self.header else "an estimate: the file has no length header"


def looks_like_mpeg(path: str) -> bool:
    """The file starts as an MP3 does: an ID3v2 tag or an MPEG audio frame header."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head[:3] == b"ID3" or (len(head) == 4 and parse_header(struct.unpack(">I", head)[0]) is not None)


def mpeg_length(path: str, *, reported: int) -> MpegLength:
    """How many samples the MPEG audio file at ``path`` can decode to, beside ``reported`` (libsndfile's).

    libsndfile's count stands when the file has a Xing/Info or VBRI header whose byte count covers the
    file (a file cut short, a stopped download, decodes to less than its header says, never more). Without
    such a header, or with one that describes only part of the file (two MP3s concatenated), every frame
    is counted: frames x samples per frame bounds what any decoder returns (decoders only trim the
    encoder's delay and padding). A file this reader cannot scan is left to libsndfile's count.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            base = _id3v2_end(handle.read(_SEARCH))
            handle.seek(base)
            head = handle.read(_SEARCH)
            found = _first_frame(head, 0)
            if found is None:
                return MpegLength(reported, header=False)
            position, frame = found
            header = _length_header(head, position, frame)
            audio_bytes = size - (base + position)
            if header is not None and header.bytes and audio_bytes <= header.bytes * (1 + _BYTES_SLACK) + 128 + 1024:
                return MpegLength(reported, header=True)  # ID3v1 and an APE tag may follow the frames
            handle.seek(base + position)
            data = handle.read()
    except OSError:
        return MpegLength(reported, header=False)
    return MpegLength(reported, header=header is not None, samples=_count_frames(data, frame))


def _count_frames(data: bytes, first: Frame) -> int:
    """Samples in every frame of ``data`` (which starts at a frame), skipping junk between frames the way a
    decoder resynchronises; frames of another rate or layer are not this stream's."""
    samples, position, end = 0, 0, len(data) - 4
    unpack = struct.Struct(">I").unpack_from
    while position <= end:
        frame = parse_header(unpack(data, position)[0])
        if frame is None or (frame.rate, frame.layer, frame.mpeg1) != (first.rate, first.layer, first.mpeg1):
            found = _first_frame(data, position + 1)
            if found is None:
                break
            position = found[0]
            continue
        samples += frame.samples
        position += frame.size
    return samples
