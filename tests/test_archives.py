"""Safe archive extraction (``ovrsisbench.data.archives``): every member is checked first.

The malicious archives are built here with ``zipfile``/``tarfile``; a rejected archive must write
nothing at all (neither inside nor outside the destination).
"""

from __future__ import annotations

import io
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovrsisbench.errors import DataError

FILES = {
    "top.txt": b"top level\n",
    "a/one.bin": bytes(range(256)) * 3,
    "a/b/c/deep.txt": b"deep\n",
    "a/b/empty.dat": b"",
    "other/x.png": b"\x89PNG not really\n",
}
TAR_MODES = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz", ".tar.bz2": "w:bz2", ".tar.xz": "w:xz"}


@pytest.fixture
def archives():
    from ovrsisbench.data import archives

    return archives


# --- builders -------------------------------------------------------------------------------


def _tar_mode(path: Path) -> str:
    name = path.name.lower()
    return next(mode for suffix, mode in TAR_MODES.items() if name.endswith(suffix))


def make_zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    """``members``: (name, data) files, or (ZipInfo, data) for special entries."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix, so external_attr carries the file type
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def tar_file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def tar_dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def tar_link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def tar_special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, _tar_mode(path), format=tarfile.GNU_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _safe_tar_members() -> list:
    return [tar_dir("a"), *(tar_file(name, data) for name, data in FILES.items())]


def _tree(folder: Path) -> dict[str, bytes]:
    """Relative posix path -> bytes of every regular file (symlinks excluded)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def _snapshot(folder: Path, *skip: Path) -> set[str]:
    """Every path under ``folder`` (links not followed), except those under ``skip``."""
    out = set()
    for path in folder.rglob("*"):
        if any(path == s or s in path.parents for s in skip):
            continue
        out.add(path.relative_to(folder).as_posix())
    return out


# --- the builders on their own --------------------------------------------------------------


def test_builders_make_what_they_claim(tmp_path):
    archive = make_zip(tmp_path / "z.zip", [("ok.txt", b"x"), zip_symlink("lnk", "/etc/passwd")])
    with zipfile.ZipFile(archive) as opened:
        info = opened.getinfo("lnk")
        assert stat.S_ISLNK(info.external_attr >> 16)
        assert opened.read("lnk") == b"/etc/passwd"
    members = [
        tar_file("/abs/evil.txt", b"x"),
        tar_link("l", "../out"),
        tar_link("h", "../out", tarfile.LNKTYPE),
        tar_special("dev", tarfile.CHRTYPE),
        tar_special("fifo", tarfile.FIFOTYPE),
    ]
    with tarfile.open(make_tar(tmp_path / "t.tar.gz", members)) as opened:
        got = {m.name: m for m in opened.getmembers()}
    assert "/abs/evil.txt" in got
    assert got["l"].issym() and got["l"].linkname == "../out"
    assert got["h"].islnk() and got["dev"].ischr() and got["fifo"].isfifo()


# --- is_archive -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a.zip", "A.ZIP", "x.tar", "x.TAR", "x.tar.gz", "x.Tar.Gz", "x.tgz", "x.TGZ", "x.tar.bz2",
     "x.tar.xz", "2_Ortho_RGB.zip", "dir/sub/Train.zip"],
)  # fmt: skip
def test_is_archive(archives, name):
    assert archives.is_archive(Path(name)) is True


@pytest.mark.parametrize(
    "name",
    ["a.png", "a.tif", "a.JPG", "a.txt", "zip", "a_zip", "a.zip.txt", "a.tar.gz.part", "tar",
     "folder"],
)  # fmt: skip
def test_is_not_archive(archives, name):
    assert archives.is_archive(Path(name)) is False


# --- safe archives --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix", [".zip", ".ZIP", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"]
)
def test_safe_archive_extracts_exactly(archives, tmp_path, suffix):
    path = tmp_path / f"pack{suffix}"
    if suffix.lower() == ".zip":
        make_zip(path, [("a/", b""), ("a/b/", b""), *FILES.items()])
    else:
        make_tar(path, _safe_tar_members())
    dest = tmp_path / "out"
    dest.mkdir()
    archives.extract_archive(path, dest)
    assert _tree(dest) == FILES
    assert _snapshot(tmp_path, dest) == {path.name}


def test_tar_in_tree_relative_links_are_allowed(archives, tmp_path):
    members = [
        *_safe_tar_members(),
        tar_link("link.txt", "a/b/c/deep.txt"),  # relative to the archive's top folder
        tar_link("a/b/up.bin", "../one.bin"),  # relative to the link's own folder: a/one.bin
        tar_link("hard.txt", "top.txt", tarfile.LNKTYPE),  # hard link: a member name
    ]
    path = make_tar(tmp_path / "links.tar", members)
    dest = tmp_path / "out"
    dest.mkdir()
    archives.extract_archive(path, dest)
    assert (dest / "link.txt").read_bytes() == FILES["a/b/c/deep.txt"]
    assert (dest / "a/b/up.bin").read_bytes() == FILES["a/one.bin"]
    assert (dest / "hard.txt").read_bytes() == FILES["top.txt"]
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data
    assert _snapshot(tmp_path, dest) == {path.name}


def test_tar_written_from_dot_extracts(archives, tmp_path):
    """``tar -C folder .`` style: a ``.`` entry and ``./``-prefixed names."""
    members = [tar_dir("."), tar_dir("./a"), *(tar_file(f"./{n}", d) for n, d in FILES.items())]
    path = make_tar(tmp_path / "dot.tar.gz", members)
    dest = tmp_path / "out"
    dest.mkdir()
    archives.extract_archive(path, dest)
    assert _tree(dest) == FILES


# --- malicious archives ---------------------------------------------------------------------


def _zip_cases(outside: Path) -> dict[str, tuple[list, str]]:
    """name -> (members, the offending member's name); safe members come first."""
    safe = list(FILES.items())
    return {
        "absolute": ([*safe, (str(outside / "abs_evil.txt"), b"evil")], "abs_evil.txt"),
        "dotdot": ([*safe, ("../escaped_dotdot.txt", b"evil")], "escaped_dotdot.txt"),
        "nested-dotdot": ([*safe, ("a/../../escaped_nested.txt", b"evil")], "escaped_nested.txt"),
        "symlink-absolute": ([*safe, zip_symlink("a/passwd_link", "/etc/passwd")], "passwd_link"),
        "symlink-escape": ([*safe, zip_symlink("a/up_link", "../../outside")], "up_link"),
        # each link alone stays inside; chained, chain_p leads to the parent of dest
        "symlink-chain": (
            [
                *safe,
                zip_symlink("chain_q", "."),
                zip_symlink("chain_p", "chain_q/.."),
                ("chain_p/evil_chain.txt", b"evil"),
            ],
            "chain_p",
        ),
        "file-as-folder": ([*safe, ("a_file", b"x"), ("a_file/inner.txt", b"y")], "a_file/inner"),
        "duplicate": ([*safe, ("twice.txt", b"x"), ("twice.txt", b"y")], "twice.txt"),  # warns
    }


def _tar_cases(outside: Path) -> dict[str, tuple[list, str]]:
    safe = _safe_tar_members()
    return {
        "absolute": ([*safe, tar_file(str(outside / "abs_evil.txt"), b"evil")], "abs_evil.txt"),
        "dotdot": ([*safe, tar_file("../escaped_dotdot.txt", b"evil")], "escaped_dotdot.txt"),
        "nested-dotdot": (
            [*safe, tar_file("a/b/../../../escaped_nested.txt", b"evil")],
            "escaped_nested.txt",
        ),
        "symlink-absolute": ([*safe, tar_link("abs_link", str(outside))], "abs_link"),
        "symlink-escape": ([*safe, tar_link("a/b/up_link", "../../../outside")], "up_link"),
        "symlink-then-write": (
            [*safe, tar_link("via", ".."), tar_file("via/escaped_via.txt", b"evil")],
            "via",
        ),
        "hardlink-escape": (
            [*safe, tar_link("hard_up", "../outside.txt", tarfile.LNKTYPE)],
            "hard_up",
        ),
        "hardlink-absolute": (
            [*safe, tar_link("hard_abs", str(outside / "target.txt"), tarfile.LNKTYPE)],
            "hard_abs",
        ),
        "char-device": ([*safe, tar_special("a/null_dev", tarfile.CHRTYPE)], "null_dev"),
        "block-device": ([*safe, tar_special("a/disk_dev", tarfile.BLKTYPE)], "disk_dev"),
        "fifo": ([*safe, tar_special("a/pipe_fifo", tarfile.FIFOTYPE)], "pipe_fifo"),
        "symlink-chain": (
            [
                *safe,
                tar_link("chain_q", "."),
                tar_link("chain_p", "chain_q/.."),
                tar_file("chain_p/evil_chain.txt", b"evil"),
            ],
            "chain_p",
        ),
        "hardlink-to-symlink": (
            [*safe, tar_link("soft", "a"), tar_link("hard_soft", "soft", tarfile.LNKTYPE)],
            "hard_soft",
        ),
    }


def _assert_rejected(archives, tmp_path: Path, path: Path, member: str) -> None:
    outside = tmp_path / "outside"
    dest = tmp_path / "work" / "dest"
    dest.mkdir(parents=True)
    before = _snapshot(tmp_path, dest)
    with pytest.raises(DataError) as caught:
        archives.extract_archive(path, dest)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert member in message, message
    assert "\n" not in message
    assert list(dest.iterdir()) == []  # nothing extracted, not even the safe members
    assert _snapshot(tmp_path, dest) == before  # nothing written anywhere else
    assert sorted(p.name for p in outside.iterdir()) == ["target.txt"]


@pytest.fixture
def outside(tmp_path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "target.txt").write_bytes(b"must stay unchanged")
    return folder


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("case", list(_zip_cases(Path("/x"))))
def test_malicious_zip_is_rejected_before_extracting(archives, tmp_path, outside, case):
    members, member = _zip_cases(outside)[case]
    path = make_zip(tmp_path / "evil.zip", members)
    _assert_rejected(archives, tmp_path, path, member)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
@pytest.mark.parametrize("case", list(_tar_cases(Path("/x"))))
def test_malicious_tar_is_rejected_before_extracting(archives, tmp_path, outside, case, suffix):
    members, member = _tar_cases(outside)[case]
    path = make_tar(tmp_path / f"evil{suffix}", members)
    _assert_rejected(archives, tmp_path, path, member)
    assert (outside / "target.txt").read_bytes() == b"must stay unchanged"


# --- corrupt archives -----------------------------------------------------------------------


def _valid_bytes(tmp_path: Path, suffix: str) -> bytes:
    path = tmp_path / f"valid{suffix}"
    if suffix == ".zip":
        rng = np.random.default_rng(0)
        blobs = {
            f"d/f{i}.bin": rng.integers(0, 256, 4000, dtype=np.uint8).tobytes() for i in range(3)
        }
        make_zip(path, list(blobs.items()))
    else:
        rng = np.random.default_rng(1)
        members = [
            tar_file(f"f{i}.bin", rng.integers(0, 256, 4000, np.uint8).tobytes()) for i in range(3)
        ]
        make_tar(path, members)
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".tar.bz2", ".tar.xz"])
def test_truncated_archive_names_the_archive(archives, tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    data = _valid_bytes(tmp_path, suffix)
    path.write_bytes(data[: len(data) // 2])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DataError) as caught:
        archives.extract_archive(path, dest)
    assert str(caught.value).startswith(str(path))


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tgz"])
def test_garbage_archive_names_the_archive(archives, tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(np.random.default_rng(2).integers(0, 256, 3000, np.uint8).tobytes())
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DataError) as caught:
        archives.extract_archive(path, dest)
    assert str(caught.value).startswith(str(path))


def test_zip_with_corrupt_member_data_names_the_archive(archives, tmp_path):
    path = tmp_path / "crc.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("data.bin", b"A" * 2000)
    data = bytearray(path.read_bytes())
    start = data.index(b"A" * 2000)
    data[start + 1000] = ord("B")  # central directory intact, CRC wrong
    path.write_bytes(bytes(data))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DataError) as caught:
        archives.extract_archive(path, dest)
    assert str(caught.value).startswith(str(path))


# --- through the CLI: a raw Potsdam download with a malicious zip -------------------------------


def _tiff_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("bad", "member"),
    [
        (("../../escaped_cli.txt", b"evil"), "escaped_cli.txt"),
        (zip_symlink("2_Ortho_RGB/evil_link.tif", "/etc/passwd"), "evil_link.tif"),
    ],
    ids=["dotdot", "symlink"],
)
def test_prepare_rejects_malicious_raw_zip(cli, tmp_path, monkeypatch, bad, member):
    src = tmp_path / "raw"
    src.mkdir()
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    label = np.zeros((16, 16, 3), np.uint8)
    label[:, :8] = (255, 255, 255)
    label[:, 8:] = (0, 0, 255)
    make_zip(
        src / "2_Ortho_RGB.zip",
        [("2_Ortho_RGB/top_potsdam_2_10_RGB.tif", _tiff_bytes(image)), bad],
    )
    make_zip(src / "5_Labels_all.zip", [("top_potsdam_2_10_label.tif", _tiff_bytes(label))])
    data_root = tmp_path / "data"
    data_root.mkdir()
    system_tmp = tmp_path / "systmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    before = _snapshot(tmp_path, data_root, system_tmp)

    result = cli("prepare", "potsdam", "--src", src, "--data-root", data_root)

    assert result.code == 2, (result.out, result.err)
    assert "error:" in result.err
    assert member in result.err
    assert _snapshot(tmp_path, data_root, system_tmp) == before  # nothing written outside
    leftovers = [p for p in data_root.rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # no temporary extraction folder left in the data root
    assert not (data_root / "potsdam" / "meta.json").exists()
    assert list(system_tmp.iterdir()) == []


def test_a_tar_cut_at_a_member_boundary_is_refused(archives, tmp_path):
    path = make_tar(tmp_path / "full.tar", _safe_tar_members())
    with tarfile.open(path) as tf:
        first = next(m for m in tf.getmembers() if m.isfile())
    boundary = first.offset_data + -(-first.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[:boundary])  # reads as a complete one-file archive
    with pytest.raises(DataError, match=r"cut\.tar: the tar archive is cut short"):
        archives.extract_archive(cut, tmp_path / "dest")


def test_a_damaged_compressed_tar_is_refused(archives, tmp_path):
    path = make_tar(tmp_path / "full.tar.gz", _safe_tar_members())
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # the gzip CRC/size trailer
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"full\.tar\.gz: damaged or unsupported archive"):
        archives.extract_archive(path, tmp_path / "dest")


def test_only_wanted_members_are_written_but_all_are_checked(archives, tmp_path):
    path = make_zip(tmp_path / "a.zip", [("keep/x.txt", b"x"), ("drop/y.txt", b"y")])
    archives.extract_archive(path, tmp_path / "dest", wanted=lambda name: name.startswith("keep"))
    assert _tree(tmp_path / "dest") == {"keep/x.txt": b"x"}
    evil = make_zip(tmp_path / "b.zip", [("keep/x.txt", b"x"), ("../drop.txt", b"y")])
    with pytest.raises(DataError, match="contains '..'"):
        archives.extract_archive(evil, tmp_path / "dest2", wanted=lambda n: n.startswith("keep"))
