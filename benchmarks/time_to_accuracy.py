"""Accuracy against wall-clock time: the PyTorch tutorial's recipe and the course's ways, on two datasets.

Four recipes train EfficientNet-Lite0 (ImageNet weights, a fresh seeded head) on ants/bees (hymenoptera,
near ImageNet) and on EuroSAT (far from it: 100 training and 50 validation images per class of the course's
split, 64 px; notebook 06_fine_tuning_far_domain takes 80 per class, in batches of 64), each with every seed:

- tutorial, fine-tune: the PyTorch transfer-learning tutorial's loop: every JPEG decoded again in every epoch
  (ImageFolder + DataLoader, 4 workers), RandomResizedCrop(224) + flip, batch 4, SGD lr 1e-3 momentum 0.9,
  StepLR(7, 0.1), the default memory layout; every parameter trains;
- tutorial, frozen backbone: the same loop training only the head (the tutorial's "fixed feature extractor":
  requires_grad off, the backbone's BatchNorm statistics still updated in training mode);
- course, cached features: each image decoded once (data.CachedImages), the frozen backbone run once per
  image at the evaluation size (features.extract_features), then the head trained on those tensors for 30
  epochs at lr 1e-3 (features.train_head), as notebooks 06 and 06_far do;
- course, fine-tune: decoded once, channels_last, the notebooks' sizes and epochs (06: 112 px crops, 128 px
  evaluation, 4 epochs, head 1e-3 / backbone 1e-4 where 06 takes them from its range test; 06_far: 64 px, 5
  epochs, 5e-3 / 2e-3), batch 32 (06_far trains in batches of 64 since this table was made), AdamW
  (surgery.parameter_groups), warm-up then cosine (tuning.warmup_cosine).

The tutorial's recipes run 2 epochs on ants/bees and 1 on EuroSAT (224 px costs about 12 times the pixels of
64 px), which keeps the whole run near 10 minutes on 2 idle cores: their curves stop early, read them as where
each recipe stands after that much time, not as its plateau.

The clock starts before anything is decoded and stops at the end of each epoch; validation runs off the
clock, after every epoch (its seconds are reported apart). The course's decoding and extraction of the
validation images are on the clock, which favours the tutorial. The script prints and writes into README.md
(between the `time_to_accuracy` markers, with the machine's CPU, threads and load): seconds per epoch of each
recipe, the accuracy each reaches over its seeds (mean and range) and the seconds to a target chosen below
every run's best accuracy, with the seeds' range. It saves the curves as a PNG under runs/benchmarks/.

Run:  python benchmarks/time_to_accuracy.py [--seeds 3] [--no-readme]   (about 10 minutes on 2 idle cores)
      python benchmarks/time_to_accuracy.py --quick                    (a smoke run on a few images; no README)
"""
# ruff: noqa: E402
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported, as in every notebook

import argparse
import copy
import dataclasses
import math
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from readme_section import machine_line, write_section
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision.transforms import v2

from course_utils import data, models, stats, train
from course_utils.data import download, eurosat
from course_utils.models import surgery, weights
from course_utils.train import tuning
from course_utils.transfer import features

TUTORIAL_WORKERS, TUTORIAL_BATCH, TUTORIAL_CROP, TUTORIAL_RESIZE, COURSE_BATCH = 4, 4, 224, 256, 32


@dataclasses.dataclass(frozen=True)
class Spec:
    """One dataset and the course's settings for it (those of its notebook)."""

    name: str
    parts: Callable[[dict, int | None], dict]  # (transform per part, images per class or None) -> datasets
    num_classes: int
    train_cache: int       # shorter side kept by CachedImages for fine-tuning
    eval_cache: int        # ... for evaluation and features
    eval_size: int         # centre crop for evaluation and features
    augment: tuple         # the course's training transforms on the cached image
    train_size: int        # the pixels fine-tuning sees (for the table)
    head_lr: float
    backbone_lr: float
    epochs: dict           # recipe -> epochs of the full run


def _per_class(dataset, limit: int | None):
    """The first ``limit`` images of every class (all of them for None)."""
    if limit is None:
        return dataset
    kept, seen = [], {}
    for index, label in enumerate(dataset.targets):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] <= limit:
            kept.append(index)
    return Subset(dataset, kept)


def hymenoptera_parts(transforms: dict, limit: int | None) -> dict:
    folder = download.hymenoptera()
    return {part: _per_class(datasets.ImageFolder(str(folder / part), transforms.get(part)), limit)
            for part in ("train", "val")}


def eurosat_parts(transforms: dict, limit: int | None) -> dict:
    counts = {"train": limit or 100, "val": limit or 50}
    return {part: eurosat.splits(per_class={part: count}, transform=transforms.get(part))[part]
            for part, count in counts.items()}


TUTORIAL_FT, TUTORIAL_FROZEN, COURSE_FEATURES, COURSE_FT = (
    "tutorial, fine-tune", "tutorial, frozen backbone", "course, cached features", "course, fine-tune")
SPECS = {
    "ants/bees": Spec("ants/bees", hymenoptera_parts, 2, train_cache=128, eval_cache=146, eval_size=128,
                      augment=(v2.RandomResizedCrop(112, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()),
                      train_size=112, head_lr=1e-3, backbone_lr=1e-4,
                      epochs={TUTORIAL_FT: 2, TUTORIAL_FROZEN: 2, COURSE_FEATURES: 30, COURSE_FT: 4}),
    "EuroSAT": Spec("EuroSAT", eurosat_parts, 10, train_cache=64, eval_cache=64, eval_size=64,
                    augment=(v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()), train_size=64,
                    head_lr=5e-3, backbone_lr=2e-3,
                    epochs={TUTORIAL_FT: 1, TUTORIAL_FROZEN: 1, COURSE_FEATURES: 30, COURSE_FT: 5}),
}


@dataclasses.dataclass
class Run:
    """One recipe, one seed: seconds before the first step, per epoch (training only), per validation pass."""

    setup: float
    epochs: list[float] = dataclasses.field(default_factory=list)
    evals: list[float] = dataclasses.field(default_factory=list)
    accs: list[float] = dataclasses.field(default_factory=list)

    def times(self) -> list[float]:
        """Clock time at the end of each epoch: setup plus the epochs so far."""
        return [self.setup + sum(self.epochs[: i + 1]) for i in range(len(self.epochs))]


def _timed(function: Callable, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def tutorial_transforms(pre: weights.Preprocessing) -> dict:
    """The tutorial's pipelines at its 224 px, applied to a freshly decoded PIL image on every access."""
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
    return {"train": v2.Compose([v2.RandomResizedCrop(TUTORIAL_CROP), v2.RandomHorizontalFlip(), *tail]),
            "val": v2.Compose([v2.Resize(TUTORIAL_RESIZE), v2.CenterCrop(TUTORIAL_CROP), *tail])}


def _tutorial_pass(model: nn.Module, loader, optimizer=None) -> float:
    """The tutorial's phase loop; returns accuracy. With an optimizer, every batch takes a step."""
    model.train(optimizer is not None)
    correct = seen = 0
    for inputs, labels in loader:
        with torch.set_grad_enabled(optimizer is not None):
            outputs = model(inputs)
            if optimizer is not None:
                optimizer.zero_grad()
                nn.functional.cross_entropy(outputs, labels).backward()
                optimizer.step()
        correct += (outputs.argmax(1) == labels).sum().item()
        seen += len(labels)
    return correct / seen


def head_owns(head: nn.Module, parameter: nn.Parameter) -> bool:
    return any(parameter is own for own in head.parameters())


def tutorial(model: nn.Module, pre, spec: Spec, limit, *, seed: int, epochs: int, head_only: bool) -> Run:
    """The tutorial's recipe: decode in every epoch, batch 4, SGD + StepLR, default memory layout."""
    model.to(memory_format=torch.contiguous_format)
    if head_only:  # the tutorial's way: requires_grad off; its BatchNorms still update their statistics
        head = model.get_submodule(models.get_head(model)[0])
        for parameter in model.parameters():
            parameter.requires_grad = head_owns(head, parameter)
    start = time.perf_counter()
    parts = spec.parts(tutorial_transforms(pre), limit)
    loaders = {part: DataLoader(parts[part], batch_size=TUTORIAL_BATCH, shuffle=part == "train",
                                num_workers=TUTORIAL_WORKERS, generator=torch.Generator().manual_seed(seed))
               for part in parts}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    run = Run(setup=time.perf_counter() - start)
    for _ in range(epochs):
        _, seconds = _timed(_tutorial_pass, model, loaders["train"], optimizer)
        scheduler.step()
        run.epochs.append(seconds)
        acc, seconds = _timed(_tutorial_pass, model, loaders["val"])
        run.accs.append(acc)
        run.evals.append(seconds)
    return run


def course_images(spec: Spec, pre, limit, *, augment: bool) -> dict:
    """Both parts decoded once (CachedImages); training images augmented, or centre-cropped like validation."""
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
    plain = v2.Compose([v2.CenterCrop(spec.eval_size), *tail])
    parts = spec.parts({}, limit)
    augmented = v2.Compose([*spec.augment, *tail])
    train_images = (data.CachedImages(parts["train"], size=spec.train_cache, transform=augmented) if augment
                    else data.CachedImages(parts["train"], size=spec.eval_cache, transform=plain))
    return {"train": train_images, "val": data.CachedImages(parts["val"], size=spec.eval_cache, transform=plain)}


def course_features(model: nn.Module, pre, spec: Spec, limit, *, seed: int, epochs: int) -> Run:
    """Decode once, run the frozen backbone once per image, train the head on the features."""
    start = time.perf_counter()
    images = course_images(spec, pre, limit, augment=False)
    feats = {part: features.extract_features(model, images[part], batch_size=64, progress=False)
             for part in ("train", "val")}
    run = Run(setup=time.perf_counter() - start)
    _, history = features.train_head(*feats["train"], *feats["val"], num_classes=spec.num_classes,
                                     epochs=epochs, lr=1e-3, seed=seed)
    run.epochs = [row["seconds"] for row in history]  # each includes its validation pass (milliseconds)
    run.accs = [row["val_acc"] for row in history]
    run.evals = [0.0 for _ in history]
    return run


def course_finetune(model: nn.Module, pre, spec: Spec, limit, *, seed: int, epochs: int) -> Run:
    """Decode once; channels_last fine-tuning at the notebook's size, per-group rates, warm-up then cosine."""
    criterion, device = nn.CrossEntropyLoss(), torch.device("cpu")
    start = time.perf_counter()
    images = course_images(spec, pre, limit, augment=True)
    loader = DataLoader(images["train"], batch_size=COURSE_BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(images["val"], batch_size=100)
    groups = surgery.parameter_groups(model, head_lr=spec.head_lr, backbone_lr=spec.backbone_lr)
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    steps = epochs * len(loader)
    schedule = tuning.warmup_cosine(optimizer, total_steps=steps, warmup_steps=max(1, steps // 10))
    run = Run(setup=time.perf_counter() - start)
    for _ in range(epochs):
        _, seconds = _timed(train.train_one_epoch, model, criterion, optimizer, loader, device, progress=False,
                            batch_scheduler=schedule)
        run.epochs.append(seconds)
        result, seconds = _timed(train.evaluate, model, criterion, val_loader, device, progress=False)
        run.accs.append(result["acc"])
        run.evals.append(seconds)
    return run


RECIPES = {
    TUTORIAL_FT: lambda *args, **kw: tutorial(*args, **kw, head_only=False),
    TUTORIAL_FROZEN: lambda *args, **kw: tutorial(*args, **kw, head_only=True),
    COURSE_FEATURES: course_features,
    COURSE_FT: course_finetune,
}


def measure(spec: Spec, imagenet: nn.Module, pre, *, seeds: list[int], limit, quick: bool) -> dict[str, list[Run]]:
    """Every recipe with every seed, interleaved (so a change of load hits every recipe alike)."""
    runs: dict[str, list[Run]] = {name: [] for name in RECIPES}
    for seed in seeds:
        for name, recipe in RECIPES.items():
            train.seed_everything(seed)
            model = copy.deepcopy(imagenet)
            models.replace_head(model, spec.num_classes, seed=seed)
            epochs = min(spec.epochs[name], 2) if quick else spec.epochs[name]
            run = recipe(model, pre, spec, limit, seed=seed, epochs=epochs)
            runs[name].append(run)
            print(f"{spec.name}, {name}, seed {seed}: {run.times()[-1]:.1f} s on the clock, validation accuracy "
                  + ", ".join(f"{acc:.1%}" for acc in run.accs[:6]) + (" ..." if len(run.accs) > 6 else ""),
                  flush=True)
    return runs


def target_for(runs: dict[str, list[Run]]) -> float:
    """A target below every run's best accuracy: the lowest best, less 2 points, rounded down to a whole %."""
    lowest = min(max(run.accs) for group in runs.values() for run in group)
    return max(0.0, math.floor(100 * lowest - 2) / 100)


def seconds_to(run: Run, target: float) -> float | None:
    """Clock time at the end of the first epoch whose validation accuracy reaches ``target``."""
    return next((t for t, acc in zip(run.times(), run.accs) if acc >= target), None)


def _s(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}" if value >= 0.01 \
        else f"{value:.4f}"


def _spread(values: list[float], *, percent: bool = False) -> str:
    """Median (seconds) or mean (accuracy) and the range over seeds."""
    if percent:
        return f"{statistics.mean(values):.1%} ({min(values):.1%} to {max(values):.1%})"
    return f"{_s(statistics.median(values))} ({_s(min(values))} to {_s(max(values))})"


def epoch_rows(spec: Spec, runs: dict[str, list[Run]]) -> list[str]:
    """Seconds before the first step, per training epoch and per validation pass of each recipe."""
    shape = {TUTORIAL_FT: (TUTORIAL_CROP, TUTORIAL_BATCH), TUTORIAL_FROZEN: (TUTORIAL_CROP, TUTORIAL_BATCH),
             COURSE_FEATURES: (spec.eval_size, 64), COURSE_FT: (spec.train_size, COURSE_BATCH)}
    rows = []
    for name, group in runs.items():
        pixels, batch = shape[name]
        evals = [s for run in group for s in run.evals]
        rows.append(f"| {spec.name} | {name} | {pixels} | {batch} | {_spread([run.setup for run in group])} | "
                    f"{_spread([s for run in group for s in run.epochs])} | "
                    + ("in the epoch" if name == COURSE_FEATURES else _spread(evals)) + " |")
    return rows


def accuracy_rows(spec: Spec, runs: dict[str, list[Run]], target: float) -> list[str]:
    """Per recipe: epochs, clock at the end, accuracy after the last and the best epoch, seconds to target."""
    rows = []
    for name, group in runs.items():
        reached = [s for s in (seconds_to(run, target) for run in group) if s is not None]
        to_target = _spread(reached) + ("" if len(reached) == len(group) else f", {len(reached)} of {len(group)} runs")
        rows.append(f"| {spec.name} | {name} | {len(group[0].epochs)} | {_spread([run.times()[-1] for run in group])} "
                    f"| {_spread([run.accs[-1] for run in group], percent=True)} "
                    f"| {_spread([max(run.accs) for run in group], percent=True)} "
                    f"| {to_target if reached else 'never'} |")
    return rows


def report(results: dict[str, dict[str, list[Run]]], notes: dict[str, dict], *, seeds: int, wall: float,
           load: float) -> str:
    """The Markdown written into README.md: machine, both tables and what each dataset's numbers rest on."""
    lines = [machine_line(threads=torch.get_num_threads()),
             f"EfficientNet-Lite0, {seeds} seeds per recipe, {wall:.0f} s wall for the whole run (load average "
             f"{load:.1f} at the start). Seconds: median over "
             "seeds (and epochs); accuracy: mean over seeds; the range over seeds in parentheses.", "",
             "| dataset | recipe | pixels | batch | before the first step (s) | per training epoch (s) "
             "| per validation pass (s) |", "| --- | --- | ---: | ---: | --- | --- | --- |"]
    for name, runs in results.items():
        lines += epoch_rows(SPECS[name], runs)
    lines += ["", "| dataset | recipe | epochs | on the clock at the end (s) | validation accuracy, last epoch "
              "| validation accuracy, best epoch | seconds to the target |",
              "| --- | --- | ---: | --- | --- | --- | --- |"]
    for name, runs in results.items():
        lines += accuracy_rows(SPECS[name], runs, notes[name]["target"])
    lines.append("")
    for name, note in notes.items():
        lines.append(f"- {name}: {note['train']} training and {note['val']} validation images, majority class "
                     f"{note['majority']:.1%}; target {note['target']:.0%} (2 points below the lowest best accuracy "
                     "of any run, rounded down)")
    return "\n".join(lines)


def plot_curves(results: dict[str, dict[str, list[Run]]], notes: dict[str, dict], axes=None):
    """Validation accuracy against seconds on the clock: each seed thin; bold, the seeds' mean accuracy at their
    median time; log time axis."""
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    if axes is None:
        _, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.6), squeeze=False)
        axes = axes[0]
    for ax, (name, runs) in zip(axes, results.items()):
        for color, (recipe, group) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], runs.items()):
            for run in group:
                ax.plot(run.times(), run.accs, color=color, alpha=0.35, linewidth=0.8, marker="o", markersize=2)
            median_times = [statistics.median(ts) for ts in zip(*(run.times() for run in group))]
            mean_accs = [statistics.mean(accs) for accs in zip(*(run.accs for run in group))]
            ax.plot(median_times, mean_accs, color=color, linewidth=2, marker=".", label=recipe)
        ax.axhline(notes[name]["majority"], color="grey", linestyle="--", linewidth=1, label="majority class")
        ax.axhline(notes[name]["target"], color="black", linestyle=":", linewidth=1, label="target")
        ax.set(xscale="log", title=f"{name}: validation accuracy against time ({len(group)} seeds)",
               xlabel="seconds on the clock (log scale; validation passes not counted)", ylabel="validation accuracy")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
    handles, labels = axes[0].get_legend_handles_labels()
    figure = axes[0].figure
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    figure.tight_layout(rect=(0, 0.14, 1, 1))
    return figure


def dataset_notes(spec: Spec, runs: dict[str, list[Run]], limit) -> dict:
    parts = spec.parts({}, limit)
    labels = [label for _, label in data.image_files(parts["val"])]
    return {"train": len(parts["train"]), "val": len(labels), "majority": stats.majority_baseline(labels),
            "target": target_for(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per recipe (at least 3 for the README)")
    parser.add_argument("--datasets", nargs="+", choices=list(SPECS), default=list(SPECS))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 images per class, at most 2 epochs, 2 seeds; prints only")
    parser.add_argument("--no-readme", action="store_true", help="print the tables without writing README.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # the tutorial's 4 workers, on purpose
    limit, seeds = (2, min(args.seeds, 2)) if args.quick else (None, args.seeds)
    start, load = time.perf_counter(), os.getloadavg()[0]
    imagenet, pre = models.load_backbone(models.DEFAULT_BACKBONE)
    results = {name: measure(SPECS[name], imagenet, pre, seeds=list(range(seeds)), limit=limit, quick=args.quick)
               for name in args.datasets}
    notes = {name: dataset_notes(SPECS[name], runs, limit) for name, runs in results.items()}
    markdown = report(results, notes, seeds=seeds, wall=time.perf_counter() - start, load=load)
    print("\n" + markdown)
    path = data.runs_root() / "benchmarks" / f"time_to_accuracy{'-quick' if args.quick else ''}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(results, notes).savefig(path, dpi=120)
    print(f"\ncurves saved to {path}")
    if args.quick or args.no_readme:
        return
    if seeds < 3:
        raise SystemExit(f"README not written: {seeds} seeds; the README's table needs at least 3 (--seeds 3).")
    write_section("time_to_accuracy", markdown)
    print("README.md: the time_to_accuracy section rewritten")


if __name__ == "__main__":
    main()
