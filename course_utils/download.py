"""Fetch the course dataset once, verify it file by file, and never leave a half-extracted folder."""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import urllib.request
import zipfile
from importlib import resources
from pathlib import Path

from course_utils.data import data_root

HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
HYMENOPTERA_FOLDER = "hymenoptera_data"


def hymenoptera(root: str | Path | None = None, *, download: bool = True, url: str = HYMENOPTERA_URL) -> Path:
    """Folder of the ants/bees dataset of the PyTorch tutorial, downloaded if it is missing.

    Args:
        root: Where datasets live; default :func:`course_utils.data.data_root`.
        download: Fetch the archive when the folder is missing.
        url: Archive to fetch (a ``file://`` URL works too).

    Returns:
        Path of ``hymenoptera_data`` (with ``train/`` and ``val/``).

    Raises:
        FileNotFoundError: The folder is missing and ``download`` is False, or files are missing.
        ValueError: Downloaded files do not match the checked-in SHA-256 manifest.

    Used in: every notebook
    """
    root = Path(root) if root is not None else data_root()
    folder = root / HYMENOPTERA_FOLDER
    manifest = load_manifest()
    if folder.is_dir():
        missing = [name for name in manifest if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} lacks {len(missing)} of the dataset's {len(manifest)} files (first: {missing[0]}). "
                "Delete that folder and call hymenoptera() again to download a fresh copy."
            )
        return folder
    if not download:
        raise FileNotFoundError(
            f"No dataset at {folder}. Call hymenoptera(download=True), or set COURSE_DATA to the folder "
            f"that contains {HYMENOPTERA_FOLDER}/."
        )
    return download_and_extract(url, root, folder_name=HYMENOPTERA_FOLDER, manifest=manifest)


def download_and_extract(url: str, root: str | Path, *, folder_name: str, manifest: dict[str, str]) -> Path:
    """Download a zip archive, extract ``folder_name`` from it, verify it, then move it into ``root``.

    Everything happens in a temporary folder beside the destination; only a verified folder is moved
    into place, so an interrupted or corrupt download leaves nothing behind.

    Raises:
        ValueError: The archive lacks ``folder_name``, escapes its folder, or fails verification.
        urllib.error.URLError: The download failed.

    Used in: every notebook, through download.hymenoptera()
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        archive = Path(tmp) / "archive.zip"
        with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
            shutil.copyfileobj(response, out)
        extracted = Path(tmp) / "extracted"
        _safe_extract(archive, extracted)
        if not (extracted / folder_name).is_dir():
            raise ValueError(f"The archive at {url} has no folder {folder_name}/ at its top level.")
        verify_files(extracted / folder_name, manifest)
        (extracted / folder_name).rename(root / folder_name)
    return root / folder_name


def verify_files(folder: str | Path, manifest: dict[str, str]) -> None:
    """Check that every file in ``manifest`` exists under ``folder`` with the listed SHA-256.

    Raises:
        ValueError: Names the first missing or changed file and how many are wrong in total.
    """
    folder = Path(folder)
    wrong = [name for name, digest in manifest.items()
             if not (folder / name).is_file() or sha256(folder / name) != digest]
    if wrong:
        raise ValueError(
            f"{len(wrong)} of {len(manifest)} files under {folder} are missing or differ from the "
            f"manifest (first: {wrong[0]}). The download is corrupt or the archive changed; try again."
        )


def build_manifest(folder: str | Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, keyed by its POSIX path relative to ``folder``."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): sha256(p) for p in files}


def load_manifest() -> dict[str, str]:
    """The checked-in SHA-256 manifest of the hymenoptera dataset."""
    text = resources.files("course_utils").joinpath("resources/hymenoptera_manifest.json").read_text()
    return json.loads(text)


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_extract(archive: Path, dest: Path) -> None:
    dest = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            if not (dest / member).resolve().is_relative_to(dest):
                raise ValueError(f"Refusing to extract {member!r}: it would land outside {dest}.")
        zf.extractall(dest)
