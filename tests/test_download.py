"""course_utils.data.download: fetch, verify and extract atomically, from file:// and a loopback HTTP server."""
import functools
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from course_utils.data import download

FILES = {
    "train/ants/a.jpg": b"ant one",
    "train/bees/b.jpg": b"bee one",
    "val/ants/c.jpg": b"ant two",
    "val/bees/d.jpg": b"bee two",
}


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return path


@pytest.fixture
def small(tmp_path, monkeypatch):
    """A tiny hymenoptera-like archive, its manifest (patched in as the checked-in one) and an empty root."""
    tree = tmp_path / "tree" / "hymenoptera_data"
    for name, content in FILES.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(content)
    manifest = download.build_manifest(tree)
    assert sorted(manifest) == sorted(FILES)
    monkeypatch.setattr(download, "load_manifest", lambda: manifest)
    archive = _zip(tmp_path / "small.zip", {f"hymenoptera_data/{k}": v for k, v in FILES.items()})
    root = tmp_path / "root"
    root.mkdir()
    (root / "keep.txt").write_text("the user's own file")
    return archive, root


@pytest.fixture
def http_url():
    """Serve a folder on 127.0.0.1 (a free port) from a thread; returns url_of(path)."""
    served = {}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output quiet
            pass

    def url_of(path: Path) -> str:
        if not served:
            handler = functools.partial(Handler, directory=str(path.parent))
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      daemon=True)
            thread.start()
            served.update(server=server, thread=thread)
        return f"http://127.0.0.1:{served['server'].server_address[1]}/{path.name}"

    yield url_of
    if served:
        served["server"].shutdown()
        served["server"].server_close()
        served["thread"].join(timeout=5)


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.parametrize("scheme", ["file", "http"])
def test_download_extracts_and_verifies(small, http_url, scheme):
    archive, root = small
    url = archive.as_uri() if scheme == "file" else http_url(archive)
    folder = download.hymenoptera(root=root, url=url)
    assert folder == root / "hymenoptera_data"
    for name, content in FILES.items():
        assert (folder / name).read_bytes() == content
    assert sorted(p.name for p in root.iterdir()) == ["hymenoptera_data", "keep.txt"], "no temp folder left"
    # A second call finds the verified folder and does not download again.
    assert download.hymenoptera(root=root, url="file:///does/not/exist.zip") == folder


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("val/bees/d.jpg", b"bee two, but changed", r"1 of 4 files .* \(first: val/bees/d.jpg\)"),
        ("../../escaped.txt", b"outside", r"'hymenoptera_data/\.\./\.\./escaped\.txt'"),
    ],
    ids=["corrupt-file", "escapes-its-folder"],
)
def test_bad_archive_is_refused_and_leaves_nothing_behind(small, tmp_path, name, content, message):
    archive, root = small
    before = _listing(root)
    members = {f"hymenoptera_data/{k}": v for k, v in FILES.items()}
    members[f"hymenoptera_data/{name}"] = content
    _zip(archive, members)
    with pytest.raises(ValueError, match=message):
        download.hymenoptera(root=root, url=archive.as_uri())
    assert _listing(root) == before
    assert not list(tmp_path.rglob("escaped.txt"))


def test_archive_without_the_folder_is_refused(small):
    archive, root = small
    _zip(archive, {f"other/{k}": v for k, v in FILES.items()})
    with pytest.raises(ValueError, match="no folder hymenoptera_data/"):
        download.hymenoptera(root=root, url=archive.as_uri())
    assert sorted(p.name for p in root.iterdir()) == ["keep.txt"]


def test_existing_folder_with_missing_files(small):
    _, root = small
    (root / "hymenoptera_data" / "train" / "ants").mkdir(parents=True)
    (root / "hymenoptera_data" / "train" / "ants" / "a.jpg").write_bytes(FILES["train/ants/a.jpg"])
    with pytest.raises(FileNotFoundError, match="lacks 3 of the dataset's 4 files"):
        download.hymenoptera(root=root)


def test_no_folder_and_download_false(small):
    _, root = small
    with pytest.raises(FileNotFoundError, match="hymenoptera_data"):
        download.hymenoptera(root=root, download=False)
    assert sorted(p.name for p in root.iterdir()) == ["keep.txt"]


def test_verify_files_names_the_first_wrong_file(small, tmp_path):
    manifest = download.load_manifest()  # the patched tiny manifest
    tree = tmp_path / "tree" / "hymenoptera_data"
    download.verify_files(tree, manifest)
    (tree / "train/bees/b.jpg").unlink()
    with pytest.raises(ValueError, match=r"1 of 4 .*first: train/bees/b.jpg"):
        download.verify_files(tree, manifest)


def test_checked_in_manifest_matches_the_real_dataset(hymenoptera_folder):
    manifest = download.load_manifest()
    assert len(manifest) == 398
    assert "train/ants/imageNotFound.gif" in manifest
    assert sum(name.startswith("val/") for name in manifest) == 153
    before = {p: p.stat().st_mtime_ns for p in hymenoptera_folder.rglob("*")}
    download.verify_files(hymenoptera_folder, manifest)
    assert download.hymenoptera(root=hymenoptera_folder.parent, download=False) == hymenoptera_folder
    after = {p: p.stat().st_mtime_ns for p in hymenoptera_folder.rglob("*")}
    assert after == before, "verification must not write into the dataset"
