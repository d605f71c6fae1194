"""Format detection from the bytes alone: tenants' file names and MIME types lie."""
from __future__ import annotations

import io
import re
import zipfile

from .errors import CorruptDocumentError, EmptyDocumentError, EncryptedDocumentError, \
    UnsupportedFormatError
from .textutil import clean_text

MIME_TYPES = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "tiff": "image/tiff",
    "bmp": "image/bmp",
    "webp": "image/webp",
    "gif": "image/gif",
    "html": "text/html",
    "markdown": "text/markdown",
    "text": "text/plain",
}
SUPPORTED = ", ".join(MIME_TYPES)

_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_KNOWN_OTHERS = (
    (_OLE_MAGIC, "an OLE2 compound file (legacy .doc/.xls/.ppt)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "an ELF executable"),
    (b"MZ", "a Windows executable"),
    (b"ID3", "an MP3 audio file"),
    (b"OggS", "an Ogg media file"),
    (b"fLaC", "a FLAC audio file"),
    (b"{\\rtf", "an RTF document"),
)
_OLE_ENCRYPTION = "EncryptionInfo".encode("utf-16-le")
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_HTML_START = re.compile(
    r"<(!doctype\s+html|html|head|body|title|script|style|iframe|h[1-6]|div|font|table|a|b|p|br|"
    r"meta|link|ul|ol|section|article|main|header|nav)[\s/>]", re.IGNORECASE)
_HTML_PREAMBLE = re.compile(r"\s*(<\?xml[^>]*>|<!--.*?-->|<!doctype\s+(?!html)[^>]*>)",
                            re.IGNORECASE | re.DOTALL)
_BINARY_NOISE = re.compile(r"[\x01-\x08\x0e-\x1a\x1c-\x1f]")
_MD_STRONG = re.compile(  # possessive runs: these scan untrusted text (see markup.py)
    r"^(#{1,6}[ \t]+\S|```|~~~|[ \t]*+\|?+[ \t]*+:?+-++:?+[ \t]*+(?:\|[ \t]*+:?+-++:?+[ \t]*+)++\|?+[ \t]*+$)",
    re.MULTILINE)
_MD_WEAK = re.compile(r"^([ \t]*+([-*+]|\d{1,3}[.)])[ \t]++\S|>[ \t]|(=++|-++)[ \t]*+$)|"
                      r"\[[^\[\]\n]++\]\([^()\s]++\)|"
                      r"\*\*\S[^*\n]*\*\*", re.MULTILINE)


def detect_format(data: bytes) -> tuple[str, str]:
    """``(format, mime type)`` from magic bytes and content sniffing, never a file name."""
    if not data:
        raise EmptyDocumentError("the document is empty (0 bytes)")
    fmt = _binary_format(data) or _text_format(data)
    if fmt is None:
        raise UnsupportedFormatError(f"unsupported format: {_describe_unknown(data)}; "
                                     f"supported: {SUPPORTED}")
    return fmt, MIME_TYPES[fmt]


def _binary_format(data: bytes) -> str | None:
    if _is_pdf(data):
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        return _zip_format(data)
    for magic, fmt in _IMAGE_MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if _is_bmp(data):
        return "bmp"
    if data.startswith(_OLE_MAGIC) and _OLE_ENCRYPTION in data:  # encrypted OOXML lives in OLE2
        raise EncryptedDocumentError("the document is a password-protected Office file; "
                                     "remove the password and send it again")
    return None


def _is_pdf(data: bytes) -> bool:
    """Readers accept junk before ``%PDF-`` in the first KiB, but prose may quote it."""
    start = data.find(b"%PDF-", 0, 1024)
    return start == 0 or (start > 0 and (not data[:start].strip() or decode_text(data) is None))


def _zip_format(data: bytes) -> str:
    """DOCX and XLSX are OOXML packages; any other zip is refused rather than guessed at."""
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CorruptDocumentError(f"could not read the zip container: {error}") from None
    if "[Content_Types].xml" in names:
        if any(name.startswith("word/") for name in names):
            return "docx"
        if any(name.startswith("xl/") for name in names):
            return "xlsx"
    raise UnsupportedFormatError("unsupported format: a zip archive that is not a DOCX or XLSX "
                                 f"package; supported: {SUPPORTED}")


def _is_bmp(data: bytes) -> bool:
    """``BM`` alone also starts ordinary text, so the DIB header size must be a real one."""
    return (len(data) >= 26 and data[:2] == b"BM"
            and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES)


def _text_format(data: bytes) -> str | None:
    if _looks_like_html(data):
        return "html"
    text = decode_text(data)
    if text is None:
        return None
    return "markdown" if looks_like_markdown(text) else "text"


def decode_text(data: bytes) -> str | None:
    """UTF-8 (BOM optional) or UTF-16 with a BOM, without NULs or much binary noise."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        codec = "utf-16"
    else:
        codec = "utf-8-sig"
    try:
        text = data.decode(codec)
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    return None if len(_BINARY_NOISE.findall(text)) > len(text) // 100 else text


def _looks_like_html(data: bytes) -> bool:
    head = data[:4096]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head.decode("utf-16", "ignore")
    else:
        text = head.decode("latin-1")
    text = text.removeprefix("\xef\xbb\xbf").lstrip("\ufeff")
    while match := _HTML_PREAMBLE.match(text):
        text = text[match.end():]
    return _HTML_START.match(text.lstrip()) is not None


def looks_like_markdown(text: str) -> bool:
    """A heading, fence or pipe-table rule is enough; otherwise several weaker markers."""
    sample = clean_text(text[:65536])
    return _MD_STRONG.search(sample) is not None or len(_MD_WEAK.findall(sample)) >= 3


def _describe_unknown(data: bytes) -> str:
    for magic, name in _KNOWN_OTHERS:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return "an ISO media file (MP4/MOV/HEIC)"
    if data[:4] == b"RIFF":
        return "a RIFF media file"
    return "binary data that is not UTF-8 text"
