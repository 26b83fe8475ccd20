"""safe_extract against hostile zips built on the spot with zipfile."""
from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from components.documents.archives import RATIO_FLOOR_BYTES, ArchiveError, safe_extract

TEXT = b"5.3.1 RRC connection establishment. The UE shall start timer T300 on sending the request.\n"


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def assert_refused(zpath: Path, dest: Path, fragment: str, **limits) -> ArchiveError:
    with pytest.raises(ArchiveError) as err:
        safe_extract(zpath, dest, **limits)
    msg = str(err.value)
    assert zpath.name in msg, msg
    assert fragment in msg, msg
    # Nothing half-extracted is left behind, neither the target nor a temp folder beside it.
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".")] == []
    return err.value


def test_extracts_files_and_folders(tmp_path):
    z = make_zip(tmp_path / "38999-h00.zip", [("38999-h00.docx", TEXT), ("annex/figures/a.txt", b"fig"), ("empty/", b"")])
    files = safe_extract(z, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in files] == ["38999-h00.docx", "annex/figures/a.txt"]
    assert files[0].read_bytes() == TEXT
    assert (tmp_path / "out" / "empty").is_dir()


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("../evil.txt", "path traversal"),
        ("docs/../../evil.txt", "path traversal"),
        ("..\\evil.txt", "path traversal"),
        ("/etc/evil.txt", "absolute path"),
        ("C:\\Windows\\evil.txt", "absolute path"),
        ("c:evil.txt", "absolute path"),
    ],
)
def test_refuses_path_traversal(tmp_path, name, fragment):
    z = make_zip(tmp_path / "slip.zip", [("ok.txt", TEXT), (name, b"pwned")])
    (tmp_path / "work").mkdir()
    assert_refused(z, tmp_path / "work" / "out", fragment)
    assert not list(tmp_path.rglob("evil.txt"))


def test_refuses_symlink_entry(tmp_path):
    link = zipfile.ZipInfo("link-to-etc")
    link.create_system = 3  # unix, so the mode bits in external_attr are meaningful
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = make_zip(tmp_path / "link.zip", [("ok.txt", TEXT), (link, b"/etc")])
    err = assert_refused(z, tmp_path / "out", "symbolic link")
    assert "link-to-etc" in str(err)


def test_refuses_encrypted_entry(tmp_path):
    z = make_zip(tmp_path / "enc.zip", [("secret.docx", TEXT)], zipfile.ZIP_STORED)
    # zipfile cannot write encrypted entries (it resets flag_bits), so set bit 0 in both headers.
    data = bytearray(z.read_bytes())
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(sig)
        data[at + flag_at] |= 0x1
    z.write_bytes(bytes(data))
    with zipfile.ZipFile(z) as zf:
        assert zf.getinfo("secret.docx").flag_bits & 0x1
    assert_refused(z, tmp_path / "out", "encrypted")


def test_refuses_too_many_files(tmp_path):
    z = make_zip(tmp_path / "many.zip", [(f"f{i}.txt", b"x") for i in range(6)])
    assert_refused(z, tmp_path / "out", "too many files", max_files=5)
    assert len(safe_extract(z, tmp_path / "ok", max_files=6)) == 6


def test_refuses_total_size_over_limit(tmp_path):
    z = make_zip(tmp_path / "big.zip", [("a.bin", b"a" * 3000), ("b.bin", b"b" * 3000)])
    assert_refused(z, tmp_path / "out", "exceeds the limit 5000", max_total_bytes=5000)


def test_refuses_compression_bomb(tmp_path):
    # 8 MiB of zeros deflates to a few KiB: a ratio of ~1000.
    z = make_zip(tmp_path / "bomb.zip", [("zeros.bin", bytes(8 * RATIO_FLOOR_BYTES))])
    assert_refused(z, tmp_path / "out", "compression ratio", max_ratio=100)
    # The same archive passes with a generous ratio, so the refusal is about the ratio.
    assert safe_extract(z, tmp_path / "ok", max_ratio=10_000)[0].stat().st_size == 8 * RATIO_FLOOR_BYTES


def test_small_compressible_entries_are_not_bombs(tmp_path):
    z = make_zip(tmp_path / "xml.zip", [("word/styles.xml", b"<w:style/>" * 20_000)])
    assert len(safe_extract(z, tmp_path / "out", max_ratio=10)) == 1


def _patch_central_sizes(zpath: Path, file_size: int) -> None:
    """Make the central directory lie about the entry's uncompressed size."""
    data = bytearray(zpath.read_bytes())
    at = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, at + 24, file_size)  # uncompressed size field
    zpath.write_bytes(bytes(data))


def test_refuses_entry_whose_header_lies(tmp_path):
    payload = bytes(range(256)) * 64  # 16 KiB, stored so its size is not hidden by compression
    z = make_zip(tmp_path / "liar.zip", [("report.docx", payload)], zipfile.ZIP_STORED)
    _patch_central_sizes(z, 100)
    with zipfile.ZipFile(z) as zf:
        assert zf.getinfo("report.docx").file_size == 100  # the declared checks see a harmless entry
    assert_refused(z, tmp_path / "out", "report.docx")


def test_refuses_non_zip(tmp_path):
    bad = tmp_path / "38999-h00.zip"
    bad.write_bytes(b"<html>503 Service Unavailable</html>")
    assert_refused(bad, tmp_path / "out", "not a readable zip")


def test_refuses_non_empty_destination(tmp_path):
    z = make_zip(tmp_path / "a.zip", [("a.txt", TEXT)])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        safe_extract(z, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def _zip_bytes(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def test_nested_zip_is_extracted_one_level(tmp_path):
    inner = _zip_bytes([("38999-h00.docx", TEXT), ("deeper.zip", _zip_bytes([("x.txt", b"x")]))])
    z = make_zip(tmp_path / "outer.zip", [("38999-h00.zip", inner), ("readme.txt", b"r")], zipfile.ZIP_STORED)
    files = safe_extract(z, tmp_path / "out")
    rel = sorted(p.relative_to(tmp_path / "out").as_posix() for p in files)
    # One level only: the zip inside the inner zip stays a file.
    assert rel == ["38999-h00/38999-h00.docx", "38999-h00/deeper.zip", "readme.txt"]
    assert not (tmp_path / "out" / "38999-h00.zip").exists()
    assert (tmp_path / "out" / "38999-h00" / "38999-h00.docx").read_bytes() == TEXT


def test_nested_zip_is_checked_too(tmp_path):
    inner = _zip_bytes([("../../escape.txt", b"pwned")])
    z = make_zip(tmp_path / "outer.zip", [("inner.zip", inner)])
    err = assert_refused(z, tmp_path / "out", "path traversal")
    assert "outer.zip!inner.zip" in str(err)
    assert not list(tmp_path.rglob("escape.txt"))


def test_nested_zips_share_the_file_budget(tmp_path):
    inner = _zip_bytes([(f"i{i}.txt", b"i") for i in range(4)])
    z = make_zip(tmp_path / "outer.zip", [("inner.zip", inner), ("a.txt", b"a"), ("b.txt", b"b")])
    assert_refused(z, tmp_path / "out", "too many files", max_files=5)
    assert len(safe_extract(z, tmp_path / "ok", max_files=6)) == 6
