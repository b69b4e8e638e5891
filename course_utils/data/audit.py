"""Look at an image folder before training on it: classes, counts, sizes, unreadable files, rotated photos,
duplicates (within a split, and across splits, which leaks test images into training), skipped files.

:func:`audit_folder` returns one row per file; :func:`summarise` turns the rows into counts and problems,
:func:`format_summary` into a short text table and :func:`plot_audit` into a figure. Duplicates are found by
hashing the *decoded* pixels (as :func:`images.load_rgb` returns them), so the same photo saved twice under two
names, or re-saved without change, is found; a re-encoded JPEG (other bytes, other pixels) is not.
:func:`holdout_splits` gives train / validation / test datasets of any folder layout, and
:func:`copy_split_folder` writes an in-memory split as such a folder (the capstone's default dataset).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path

from course_utils.arguments import int_problem
from course_utils.data.folders import SPLIT_FOLDER_NAMES, find_splits
from course_utils.data.decoding import is_image_file, load_rgb

_ROLES = {name: role for role, names in SPLIT_FOLDER_NAMES.items() for name in names}
ORIENTATION_TAG = 0x0112  # EXIF "Orientation": 1 is upright, 2-8 a flip and/or rotation to apply when showing


def _place(relative: Path) -> tuple[str, str | None, str | None]:
    """``(split, class, why skipped)`` of a file from its path relative to the audited folder."""
    parts = relative.parts
    split = _ROLES.get(parts[0].lower()) if len(parts) > 1 else None
    inner = parts[1:] if split else parts
    hidden = [p for p in parts[:-1] if p.startswith((".", "__MACOSX"))]
    if hidden:
        return split or "all", None, f"inside the hidden folder {hidden[0]}/ (not a class)"
    if inner[-1].startswith("."):
        return split or "all", None, "hidden file"
    if len(inner) < 2:
        return split or "all", None, "not inside a class folder"
    if not is_image_file(inner[-1]):
        return split or "all", inner[0], f"not an image file ({Path(inner[-1]).suffix or 'no extension'})"
    return split or "all", inner[0], None


def _read(path: Path) -> dict:
    """Size, EXIF orientation and pixel hash of one image file, or why it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as raw:
            orientation = int(raw.getexif().get(ORIENTATION_TAG, 1))
        image = load_rgb(path)
    except (OSError, ValueError, SyntaxError) as err:
        return {"status": "unreadable", "reason": str(err).split(". Delete")[0]}
    digest = hashlib.sha1(f"{image.size}".encode() + image.tobytes()).hexdigest()
    return {"status": "image", "width": image.width, "height": image.height, "orientation": orientation,
            "digest": digest}


def audit_folder(folder: str | os.PathLike) -> list[dict]:
    """One row per file under ``folder``: where it is, whether the loader uses it, and what it holds.

    Layouts: ``train/``, ``val/`` (or ``valid/``, ``validation/``) and ``test/`` folders of class folders, or
    class folders directly (split ``"all"``). Symbolic links are followed.

    Returns:
        Rows ``{"path", "split", "class", "status", "reason", "width", "height", "orientation", "digest"}``;
        ``status`` is ``"image"`` (the loader uses it), ``"skipped"`` (the loader ignores it; ``reason``
        says why) or ``"unreadable"`` (the loader would stop on it; ``reason`` is the decoder's message).

    Raises:
        FileNotFoundError: ``folder`` is not a folder.

    Used in: 11_your_own_images.ipynb
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder at {folder}: set the notebook's FOLDER to the folder of your images.")
    rows = []
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        subfolders.sort()
        for name in sorted(files):
            path = Path(directory) / name
            split, label, skipped = _place(path.relative_to(folder))
            row = {"path": str(path), "split": split, "class": label, "status": "skipped", "reason": skipped,
                   "width": None, "height": None, "orientation": None, "digest": None}
            if skipped is None:
                row.update(_read(path))
            rows.append(row)
    return rows


def duplicate_groups(rows: list[dict]) -> list[list[dict]]:
    """Groups of readable images with identical pixels (two or more files each), largest first.

    Used in: 11_your_own_images.ipynb (through summarise)
    """
    by_digest = defaultdict(list)
    for row in rows:
        if row["status"] == "image":
            by_digest[row["digest"]].append(row)
    return sorted((group for group in by_digest.values() if len(group) > 1), key=len, reverse=True)


def summarise(rows: list[dict]) -> dict:
    """Counts and problems of an audit.

    Returns:
        ``{"counts": {split: {class: images}}, "classes": [...], "sizes": Counter((width, height)),
        "unreadable": [rows], "skipped": [rows], "rotated": [rows with an EXIF orientation other than 1],
        "duplicates_within": [groups in one split], "duplicates_across": [groups spanning splits: leaks],
        "conflicting_labels": [groups whose files sit in different classes], "imbalance": largest / smallest
        class count in training (or in "all")}``.

    Used in: 11_your_own_images.ipynb
    """
    images = [row for row in rows if row["status"] == "image"]
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in images:
        counts[row["split"]][row["class"]] += 1
    classes = sorted({row["class"] for row in images})
    groups = duplicate_groups(rows)
    reference = counts.get("train") or counts.get("all") or Counter()
    present = [reference.get(name, 0) for name in classes]
    return {
        "counts": {split: dict(sorted(c.items())) for split, c in counts.items()}, "classes": classes,
        "sizes": Counter((row["width"], row["height"]) for row in images),
        "unreadable": [row for row in rows if row["status"] == "unreadable"],
        "skipped": [row for row in rows if row["status"] == "skipped"],
        "rotated": [row for row in images if row["orientation"] not in (None, 1)],
        "duplicates_within": [g for g in groups if len({row["split"] for row in g}) == 1],
        "duplicates_across": [g for g in groups if len({row["split"] for row in g}) > 1],
        "conflicting_labels": [g for g in groups if len({row["class"] for row in g}) > 1],
        "imbalance": max(present) / min(present) if present and min(present) > 0 else float("inf"),
    }


def format_summary(summary: dict) -> str:
    """The audit as a short text table: images per class and split, then one line per kind of problem.

    Used in: 11_your_own_images.ipynb
    """
    splits = [s for s in ("train", "val", "test", "all") if s in summary["counts"]]
    width = max([len("class"), *(len(c) for c in summary["classes"])])
    lines = [f"{'class':{width}s}" + "".join(f"{s:>8s}" for s in splits),
             *(f"{name:{width}s}" + "".join(f"{summary['counts'][s].get(name, 0):8d}" for s in splits)
               for name in summary["classes"]),
             f"{'total':{width}s}" + "".join(f"{sum(summary['counts'][s].values()):8d}" for s in splits), ""]
    sizes = summary["sizes"].most_common(3)
    lines.append(f"image sizes: {len(summary['sizes'])} distinct; most common " +
                 ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes))
    lines.append(f"class imbalance (largest / smallest training class): {summary['imbalance']:.2f}")
    for key, text in (("unreadable", "unreadable files (the loader would stop on them)"),
                      ("skipped", "files the loader skips"), ("rotated", "photos with an EXIF rotation"),
                      ("duplicates_within", "groups of identical images within one split"),
                      ("duplicates_across", "groups of identical images across splits (leaks)"),
                      ("conflicting_labels", "groups of identical images with different classes")):
        lines.append(f"{text}: {len(summary[key])}")
    return "\n".join(lines)


def problem_lines(summary: dict, *, limit: int = 5) -> list[str]:
    """Up to ``limit`` lines per kind of problem, each naming the file(s) and what to do.

    Used in: 11_your_own_images.ipynb
    """
    lines = []
    for row in summary["unreadable"][:limit]:
        lines.append(f"unreadable: {row['path']}: {row['reason']}. Delete or replace it.")
    for row in summary["skipped"][:limit]:
        lines.append(f"skipped: {row['path']}: {row['reason']}.")
    for row in summary["rotated"][:limit]:
        lines.append(f"EXIF orientation {row['orientation']}: {row['path']} (load_rgb turns it upright).")
    for group in summary["duplicates_across"][:limit]:
        lines.append("leak: the same pixels in " + ", ".join(f"{r['split']}/{r['class']}" for r in group) + ": " +
                     ", ".join(r["path"] for r in group) + ". Keep one copy, in one split.")
    for group in summary["duplicates_within"][:limit]:
        lines.append("duplicate: " + ", ".join(r["path"] for r in group) + ". Keep one copy.")
    return lines


def plot_audit(summary: dict, *, axes=None):
    """Two panels: images per class and split (bars), and image sizes (width against height, dot size = count).

    Returns:
        The figure.

    Used in: 11_your_own_images.ipynb
    """
    import numpy as np

    from course_utils.plotting import new_axes

    axes = new_axes(axes, ncols=2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    fig = axes[0].figure
    splits = [s for s in ("train", "val", "test", "all") if s in summary["counts"]]
    x, bar = np.arange(len(summary["classes"])), 0.8 / max(1, len(splits))
    for i, split in enumerate(splits):
        axes[0].bar(x + i * bar, [summary["counts"][split].get(c, 0) for c in summary["classes"]], bar, label=split)
    axes[0].set_xticks(x + bar * (len(splits) - 1) / 2, summary["classes"], rotation=30, ha="right")
    axes[0].set(title="Images per class and split", xlabel="class", ylabel="images")
    axes[0].set_ylim(0, 1.3 * max([1] + [max(c.values(), default=0) for c in summary["counts"].values()]))
    axes[0].legend(fontsize=8, loc="upper center", ncol=len(splits))  # one row in the headroom above the bars
    sizes = summary["sizes"]
    axes[1].scatter([w for w, _ in sizes], [h for _, h in sizes], s=[20 + 200 * n / max(sizes.values())
                                                                       for n in sizes.values()], alpha=0.6)
    axes[1].set(title="Image sizes (dot area: number of images)", xlabel="width (pixels)", ylabel="height (pixels)")
    fig.tight_layout()
    return fig


def copy_split_folder(parts: dict, folder: str | os.PathLike) -> Path:
    """Write datasets as ``folder/<part>/<class>/<file>`` (copies; files already there are kept).

    Args:
        parts: ``{part: dataset}`` of ``ImageFolder`` or ``Subset`` of one, e.g. ``{"train": ..., "test": ...}``.
        folder: Where to write, e.g. under ``data.runs_root()``; never the dataset's own folder.

    Returns:
        ``folder``.

    Used in: 11_your_own_images.ipynb (through eurosat_capstone_folder)
    """
    from course_utils.files import atomic_path
    from course_utils.data import image_files

    folder = Path(folder)
    for part, dataset in parts.items():
        classes = dataset.classes if hasattr(dataset, "classes") else dataset.dataset.classes
        for path, label in image_files(dataset):
            target = folder / part / classes[label] / Path(path).name
            if not target.is_file():
                with atomic_path(target) as tmp:
                    shutil.copyfile(path, tmp)
    return folder


def _check_counts(counts: dict[str, int], *, size: int) -> None:
    """Raise one message for every count that is not a positive integer, or for a total above ``size``."""
    problems = [int_problem(part, count, maximum=size, example=default,
                            fix=f"It is the number of images per class put in {part}/.")
                for (part, count), default in zip(counts.items(), (60, 20, 20))]
    problems = [problem for problem in problems if problem]
    if not problems and sum(counts.values()) > size:
        problems.append(f"train + val + test must be at most {size} (the capstone images per class), got "
                        f"{sum(counts.values())} from {counts}. Lower one of them; the defaults are 60 + 20 + 20.")
    if problems:
        raise ValueError(" ".join(problems))


def eurosat_capstone_folder(folder: str | os.PathLike, *, train: int = 60, val: int = 20, test: int = 20) -> Path:
    """The capstone part of the EuroSAT split (100 images per class) copied to ``folder/{train,val,test}/<class>``.

    The part's file lists are in shuffled order, so the first ``train`` images of each class go to
    ``train/``, the next ``val`` to ``val/`` and the next ``test`` to ``test/``. The dataset itself is only read.

    Raises:
        ValueError: The three counts are not positive or add up to more than the part holds.

    Used in: 11_your_own_images.ipynb
    """
    from torch.utils.data import Subset

    from course_utils.data import eurosat

    size = eurosat.split_lists()["sizes"]["capstone"]
    counts = {"train": train, "val": val, "test": test}
    _check_counts(counts, size=size)
    capstone = eurosat.splits(per_class={"capstone": size})["capstone"]
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(capstone.targets):
        by_class[label].append(index)
    parts, start = {}, 0
    for part, count in counts.items():
        parts[part] = Subset(capstone, [i for members in by_class.values() for i in members[start:start + count]])
        start += count
    return copy_split_folder(parts, folder)


def holdout_splits(folder: str | os.PathLike, *, val_fraction: float = 0.2, test_fraction: float = 0.2,
                   seed: int = 0) -> dict:
    """Train, validation and test datasets of a folder; a test set is held out when the folder has none.

    The folder's own ``val/`` and ``test/`` folders are used when present (:func:`folders.find_splits`);
    otherwise ``val_fraction`` of every class becomes validation and ``test_fraction`` of every class of
    what remains for training becomes the test set (:func:`folders.stratified_split`, seeded).

    Raises:
        ValueError, FileNotFoundError: As :func:`folders.find_splits`.

    Used in: 11_your_own_images.ipynb
    """
    try:
        splits = find_splits(folder, val_fraction=val_fraction)
    except ValueError:   # the folder has its own val/ folder: use it (other problems are raised again)
        splits = find_splits(folder)
    if "test" not in splits:
        splits["train"], splits["test"] = _holdout(splits["train"], fraction=test_fraction, seed=seed)
    return splits


def _holdout(dataset, *, fraction: float, seed: int):
    """Split an ``ImageFolder`` or a ``Subset`` of one into two class-balanced subsets of the same folder."""
    from types import SimpleNamespace

    from torch.utils.data import Subset

    from course_utils.data import image_files
    from course_utils.data.folders import stratified_split

    base, indices = (dataset.dataset, list(dataset.indices)) if isinstance(dataset, Subset) else \
        (dataset, list(range(len(dataset))))
    view = SimpleNamespace(targets=[label for _, label in image_files(dataset)], classes=base.classes, root=base.root)
    parts = tuple(Subset(base, [indices[i] for i in part.indices])
                  for part in stratified_split(view, val_fraction=fraction, seed=seed))
    for part in parts:
        part.classes = base.classes
    return parts
