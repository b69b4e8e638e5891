"""Fetch the course dataset once, verify it file by file, and never leave a half-extracted folder."""
from __future__ import annotations

import hashlib
import json
import shutil
import os
import tempfile
import urllib.error
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
        ValueError: Downloaded files do not match the checked-in SHA-256 manifest, or ``root``
            (``COURSE_DATA``) points into the dataset folder itself (the message says what to set instead).
        ConnectionError: The download failed (offline); the message says where the dataset was looked for.
        PermissionError: ``root`` cannot be written; nothing was downloaded.

    Used in: every notebook
    """
    setting = "root" if root is not None else "COURSE_DATA" if os.environ.get("COURSE_DATA") else "the data root"
    root = Path(root) if root is not None else data_root()
    folder = root / HYMENOPTERA_FOLDER
    manifest = load_manifest()
    _check_not_inside(root, manifest, setting)
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
    return download_and_extract(url, root, folder_name=HYMENOPTERA_FOLDER, manifest=manifest, setting=setting)


def _check_not_inside(root: Path, manifest: dict[str, str], setting: str) -> None:
    """Refuse a data root that is the dataset folder itself, or one of its folders (``train/``)."""
    sample = list(manifest)[:3]
    for dataset in (root, *list(root.parents)[:2]):
        if dataset.name == HYMENOPTERA_FOLDER or (sample and all((dataset / name).is_file() for name in sample)):
            raise ValueError(
                f"{setting} is {root}, which is inside the dataset folder {dataset} itself, so the course would "
                f"look for {root / HYMENOPTERA_FOLDER} and download a second copy there. Set it to the folder "
                f"that contains {dataset.name}/: COURSE_DATA={dataset.parent} (os.environ['COURSE_DATA'] = "
                f"{str(dataset.parent)!r} before importing course_utils, or %env COURSE_DATA={dataset.parent})."
            )


def _check_can_write(root: Path, folder_name: str, setting: str) -> None:
    """Before downloading: ``root`` (or the folder it will be made in) can take new files. Nothing is left."""
    from course_utils.files import write_error

    existing = next(p for p in (root, *root.parents) if p.exists())
    err = write_error(existing, create=False)
    if err is not None:
        raise PermissionError(
            f"{root} ({setting}) has no {folder_name}/ and {existing} cannot be written ({err.strerror or err}), "
            "so the dataset cannot be downloaded there. Set COURSE_DATA to a folder you can write to, or to the "
            f"folder that already contains {folder_name}/."
        )


def download_and_extract(url: str, root: str | Path, *, folder_name: str, manifest: dict[str, str],
                         setting: str = "root") -> Path:
    """Download a zip archive, extract ``folder_name`` from it, verify it, then move it into ``root``.

    The archive is fetched into the system's temporary folder; ``root`` is created only once it has
    arrived, and it is extracted in a temporary folder beside the destination; only a verified folder is
    moved into place, so a failed, interrupted or corrupt download leaves nothing behind.

    Raises:
        ValueError: The archive lacks ``folder_name``, escapes its folder, or fails verification.
        ConnectionError: The download failed (offline, wrong URL); the message says what to do.
        PermissionError: ``root`` cannot be written (checked before downloading).

    Used in: every notebook, through download.hymenoptera()
    """
    root = Path(root)
    _check_can_write(root, folder_name, setting)
    with tempfile.TemporaryDirectory(prefix="course-download-") as fetched:
        archive = Path(fetched) / "archive.zip"
        _fetch(url, archive, root / folder_name, setting)
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
            return _extract_verified(archive, Path(tmp), root, folder_name=folder_name, manifest=manifest, url=url)


def _fetch(url: str, archive: Path, wanted: Path, setting: str) -> None:
    import http.client

    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise ConnectionError(
            f"Could not download {url} ({reason}), and there is no dataset at {wanted} ({setting} is "
            f"{wanted.parent}). Fix: connect to the internet and run again; or, offline, set COURSE_DATA to the "
            f"folder that already contains {wanted.name}/, or copy {wanted.name}/ into {wanted.parent}."
        ) from None


def _extract_verified(archive: Path, tmp: Path, root: Path, *, folder_name: str, manifest: dict[str, str],
                      url: str) -> Path:
    """Extract ``archive`` into ``tmp``, verify ``folder_name`` against ``manifest``, move it into ``root``."""
    extracted = tmp / "extracted"
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
