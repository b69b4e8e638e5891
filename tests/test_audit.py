"""course_utils.data.audit on a small synthetic folder (5 classes) with every problem the audit looks for."""
import pytest
import torch
from PIL import Image

from course_utils.data import audit

CLASSES = ["a", "b", "c", "d", "e"]   # five classes on purpose


def write(path, seed, size=(12, 10), **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path, **save)


@pytest.fixture
def messy(tmp_path):
    """train/val/test with 5 classes; a leak, a duplicate, a rotated photo, a broken file and files to skip."""
    root = tmp_path / "photos"
    for split, count in (("train", 3), ("val", 1), ("Test", 1)):
        for name in CLASSES:
            for i in range(count if name != "a" or split != "train" else count + 3):
                write(root / split / name / f"{i}.png", seed=hash((split, name, i)) % 10_000)
    (root / "Test" / "b" / "leak.png").write_bytes((root / "train" / "c" / "0.png").read_bytes())
    (root / "train" / "d" / "copy.png").write_bytes((root / "train" / "d" / "1.png").read_bytes())
    exif = Image.Exif()
    exif[0x0112] = 6
    write(root / "val" / "e" / "phone.jpg", seed=1, size=(16, 8), exif=exif)
    (root / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG at all")
    (root / "train" / "b" / "notes.txt").write_text("hi")
    (root / "train" / "b" / ".DS_Store").write_bytes(b"\0")
    write(root / "train" / "a" / ".ipynb_checkpoints" / "0-checkpoint.png", seed=5)
    write(root / "train" / "stray.png", seed=6)
    return root


def test_audit_rows_say_what_the_loader_does_with_each_file(messy):
    rows = {str(r["path"]).removeprefix(str(messy) + "/"): r for r in audit.audit_folder(messy)}
    assert rows["Test/b/leak.png"]["split"] == "test" and rows["Test/b/leak.png"]["class"] == "b"
    assert rows["train/b/broken.jpg"]["status"] == "unreadable" and "broken.jpg" in rows["train/b/broken.jpg"]["reason"]
    assert rows["train/b/notes.txt"]["reason"] == "not an image file (.txt)"
    assert rows["train/b/.DS_Store"]["reason"] == "hidden file"
    assert rows["train/a/.ipynb_checkpoints/0-checkpoint.png"]["reason"].startswith("inside the hidden folder")
    assert rows["train/stray.png"]["reason"] == "not inside a class folder"
    phone = rows["val/e/phone.jpg"]
    assert phone["orientation"] == 6 and (phone["width"], phone["height"]) == (8, 16), "size as shown upright"
    assert rows["train/c/0.png"]["digest"] == rows["Test/b/leak.png"]["digest"]


def test_summary_counts_and_finds_every_problem(messy):
    summary = audit.summarise(audit.audit_folder(messy))
    assert summary["classes"] == CLASSES
    assert summary["counts"]["train"] == {"a": 6, "b": 3, "c": 3, "d": 4, "e": 3}
    assert summary["counts"]["test"]["b"] == 2 and sum(summary["counts"]["val"].values()) == 6
    assert summary["imbalance"] == 2.0
    assert [r["path"].split("/")[-1] for r in summary["unreadable"]] == ["broken.jpg"]
    assert len(summary["skipped"]) == 4 and [r["orientation"] for r in summary["rotated"]] == [6]
    (leak,), (dup,) = summary["duplicates_across"], summary["duplicates_within"]
    assert sorted(r["split"] for r in leak) == ["test", "train"] and leak in summary["conflicting_labels"]
    assert sorted(r["path"].split("/")[-1] for r in dup) == ["1.png", "copy.png"]
    text = audit.format_summary(summary)
    assert "groups of identical images across splits (leaks): 1" in text and text.split("\n")[0].split() == [
        "class", "train", "val", "test"]
    problems = "\n".join(audit.problem_lines(summary))
    assert "leak: the same pixels in" in problems and "broken.jpg" in problems and "EXIF orientation 6" in problems


def test_plot_has_titles_and_labels(messy):
    import matplotlib

    matplotlib.use("Agg")
    fig = audit.plot_audit(audit.summarise(audit.audit_folder(messy)))
    assert all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)


def test_holdout_splits_keeps_a_test_folder_or_holds_one_out(messy, tmp_path):
    from course_utils import data

    (messy / "train" / "b" / "broken.jpg").unlink()
    splits = audit.holdout_splits(messy)
    assert sorted(splits) == ["test", "train", "val"] and len(splits["test"]) == 6
    flat = tmp_path / "flat"
    for name in CLASSES[:3]:
        for i in range(10):
            write(flat / name / f"{i}.png", seed=100 + i)
    splits = audit.holdout_splits(flat, val_fraction=0.2, test_fraction=0.25, seed=1)
    files = {part: {p for p, _ in data.image_files(ds)} for part, ds in splits.items()}
    assert [len(files[p]) for p in ("train", "val", "test")] == [18, 6, 6]
    assert not (files["train"] & files["test"]) and not (files["val"] & files["test"])
    assert splits["test"].classes == CLASSES[:3]


def test_copy_split_folder_writes_a_folder_the_audit_reads(messy, tmp_path):
    (messy / "train" / "b" / "broken.jpg").unlink()
    splits = audit.holdout_splits(messy)
    target = audit.copy_split_folder({"train": splits["train"], "test": splits["test"]}, tmp_path / "copy")
    summary = audit.summarise(audit.audit_folder(target))
    assert summary["counts"]["train"] == {"a": 6, "b": 3, "c": 3, "d": 4, "e": 3}
    assert sum(summary["counts"]["test"].values()) == 6
    with pytest.raises(FileNotFoundError, match="No folder at"):
        audit.audit_folder(tmp_path / "nowhere")


@pytest.mark.parametrize("counts, message", [
    ({"train": 0, "val": True}, "train must be an integer from 1 to 100 such as 60, got 0. It is the number of "
                                "images per class put in train/. val must be an integer from 1 to 100 such as 20, "
                                "got True."),
    ({"train": 90}, "train + val + test must be at most 100 (the capstone images per class), got 130"),
])
def test_capstone_counts_are_checked_before_anything_is_copied(tmp_path, counts, message):
    with pytest.raises(ValueError) as error:
        audit.eurosat_capstone_folder(tmp_path / "capstone", **counts)
    assert str(error.value).startswith(message)
    assert not (tmp_path / "capstone").exists()
