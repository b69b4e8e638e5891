"""Time to accuracy: the PyTorch tutorial's recipe against the course_utils way, in one process.

Both use the default backbone (EfficientNet-Lite0, ImageNet weights), the hymenoptera dataset, the same
seed and the same randomly initialised 2-class head. For head-only training and for full fine-tuning it
prints the seconds until validation accuracy first reaches the target (94 %), measured from the moment
the datasets are built (model loading excluded, the same for both), and the ratio tutorial / course_utils.

The tutorial recipe: per-batch loop, batch size 4, SGD lr 1e-3 momentum 0.9, StepLR(7, 0.1),
RandomResizedCrop(224) + flip, every image decoded from its JPEG every epoch (DataLoader, 4 workers).

The course_utils way:
- head only: decode each image once (CachedImages), run the frozen backbone once per image
  (features.extract_features), then train the head on those tensors (features.train_head);
- full fine-tuning: decode once, train every parameter at 160 px (evaluation stays at 224 px, see
  "FixRes", Touvron et al. 2019) with AdamW, a 10x higher learning rate for the new head than for the
  pretrained backbone (surgery.parameter_groups), batch 16, channels_last.

Run:  python benchmarks/time_to_accuracy.py [--target 0.94] [--repeats 3] [--output benchmarks/latest.md]
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import torch
from torch import nn

from course_utils import data, download, features, models, surgery, train

SEED = 0


def fresh_model() -> tuple[nn.Module, models.Preprocessing]:
    model, pre = models.load_backbone(models.DEFAULT_BACKBONE)
    models.replace_head(model, 2, seed=SEED)
    return model, pre


def tutorial_recipe(model, pre, folder, *, head_only: bool, target: float, max_epochs: int) -> dict:
    """The tutorial's loop, written out: decode every epoch, batch 4, SGD + StepLR."""
    from torchvision import datasets, transforms

    if head_only:
        surgery.freeze(model)
        surgery.unfreeze(model, [models.get_head(model)[0]])
    normalize = transforms.Normalize(pre.mean, pre.std)
    tfs = {
        "train": transforms.Compose([transforms.RandomResizedCrop(pre.crop), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), normalize]),
        "val": transforms.Compose([transforms.Resize(pre.resize), transforms.CenterCrop(pre.crop),
                                   transforms.ToTensor(), normalize]),
    }
    start = time.perf_counter()
    sets = {split: datasets.ImageFolder(str(folder / split), tfs[split]) for split in ("train", "val")}
    loaders = {split: torch.utils.data.DataLoader(sets[split], batch_size=4, shuffle=True, num_workers=4)
               for split in sets}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = nn.CrossEntropyLoss()
    best = 0.0
    for epoch in range(1, max_epochs + 1):
        for phase in ("train", "val"):
            model.train(phase == "train")
            correct = 0
            for inputs, labels in loaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                correct += (outputs.argmax(1) == labels).sum().item()
            if phase == "train":
                scheduler.step()
        best = max(best, correct / len(sets["val"]))
        if best >= target:
            return {"seconds": time.perf_counter() - start, "acc": best, "epochs": epoch, "reached": True}
    return {"seconds": time.perf_counter() - start, "acc": best, "epochs": max_epochs, "reached": False}


def course_head_only(model, pre, folder, *, target: float, max_epochs: int) -> dict:
    """Decode once, run the frozen backbone once per image, train the head on the features."""
    start = time.perf_counter()
    splits = data.find_splits(folder)
    evaluation = data.build_transforms(pre)["val"]
    feats = {split: features.extract_features(model, data.CachedImages(ds, pre.resize, evaluation),
                                              progress=False)
             for split, ds in splits.items()}
    feature_seconds = time.perf_counter() - start
    _, history = features.train_head(*feats["train"], *feats["val"], num_classes=2,
                                     epochs=max_epochs, lr=1e-2, seed=SEED)
    return _first_reaching(history, target, start_seconds=feature_seconds)


def course_full(model, pre, folder, *, target: float, max_epochs: int, train_crop: int = 160) -> dict:
    """Decode once; full fine-tuning at a lower training resolution with per-group learning rates."""
    start = time.perf_counter()
    splits = data.find_splits(folder)
    train_tf = data.build_transforms(dataclasses.replace(pre, crop=train_crop))["train"]
    val_tf = data.build_transforms(pre)["val"]
    loader = torch.utils.data.DataLoader(data.CachedImages(splits["train"], pre.resize, train_tf),
                                         batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(SEED))
    val_loader = torch.utils.data.DataLoader(data.CachedImages(splits["val"], pre.resize, val_tf), batch_size=64)
    optimizer = torch.optim.AdamW(surgery.parameter_groups(model, head_lr=1e-3, backbone_lr=1e-4))
    criterion, device, best = nn.CrossEntropyLoss(), torch.device("cpu"), 0.0
    for epoch in range(1, max_epochs + 1):
        train.train_one_epoch(model, criterion, optimizer, loader, device, progress=False)
        best = max(best, train.evaluate(model, criterion, val_loader, device, progress=False)["acc"])
        if best >= target:
            return {"seconds": time.perf_counter() - start, "acc": best, "epochs": epoch, "reached": True}
    return {"seconds": time.perf_counter() - start, "acc": best, "epochs": max_epochs, "reached": False}


def _first_reaching(history: list[dict], target: float, *, start_seconds: float) -> dict:
    """Seconds until the first epoch whose val accuracy reaches the target (feature time included)."""
    elapsed, best = start_seconds, 0.0
    for row in history:
        elapsed += row["seconds"]
        best = max(best, row["val_acc"])
        if best >= target:
            return {"seconds": elapsed, "acc": best, "epochs": row["epoch"], "reached": True}
    return {"seconds": elapsed, "acc": best, "epochs": len(history), "reached": False}


def _fmt(result: dict) -> str:
    epochs = f"{result['epochs']} epoch" + ("" if result["epochs"] == 1 else "s")
    if not result["reached"]:
        return f"not reached in {result['seconds']:.1f} s (best {result['acc']:.1%} in {epochs})"
    return f"{result['seconds']:.1f} s ({result['acc']:.1%} after {epochs})"


def _speedup(tutorial: dict, ours: dict) -> str:
    """Ratio of times to target; a lower bound ('>') when only the course_utils run reached it."""
    if not ours["reached"]:
        return "n/a (course_utils did not reach the target)"
    ratio = tutorial["seconds"] / ours["seconds"]
    return f"{ratio:.1f}x" if tutorial["reached"] else f"> {ratio:.1f}x (tutorial never reached it)"


def _one_comparison(folder, *, head_only: bool, target: float, max_epochs: int) -> tuple[dict, dict]:
    """One run of the tutorial recipe and one of the course_utils way, each from a fresh model."""
    train.seed_everything(SEED)
    tutorial = tutorial_recipe(*fresh_model(), folder, head_only=head_only, target=target, max_epochs=max_epochs)
    train.seed_everything(SEED)
    model, pre = fresh_model()
    if head_only:
        ours = course_head_only(model, pre, folder, target=target, max_epochs=100)
    else:
        ours = course_full(model, pre, folder, target=target, max_epochs=max_epochs)
    return tutorial, ours


def _median(results: list[dict]) -> dict:
    """The run with the median time (runs that reached the target count as faster than those that did not)."""
    ordered = sorted(results, key=lambda r: (not r["reached"], r["seconds"]))
    return ordered[(len(ordered) - 1) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.94, help="validation accuracy to reach")
    parser.add_argument("--max-epochs", type=int, default=6, help="epochs before giving up (tutorial, full FT)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each comparison this many times and report the median run of each side")
    parser.add_argument("--output", help="also write the markdown table to this file")
    args = parser.parse_args()
    folder = download.hymenoptera()
    rows = []
    for task, head_only in (("head only", True), ("full fine-tuning", False)):
        runs = {"tutorial": [], "ours": []}
        for _ in range(args.repeats):
            tutorial, ours = _one_comparison(folder, head_only=head_only, target=args.target,
                                             max_epochs=args.max_epochs)
            runs["tutorial"].append(tutorial)
            runs["ours"].append(ours)
            print(f"{task}: tutorial {_fmt(tutorial)} | course_utils {_fmt(ours)}", flush=True)
        tutorial, ours = _median(runs["tutorial"]), _median(runs["ours"])
        rows.append(f"| {task} | {_fmt(tutorial)} | {_fmt(ours)} | {_speedup(tutorial, ours)} |")
    header = (f"Time to {args.target:.0%} validation accuracy on hymenoptera, EfficientNet-Lite0, "
              f"median of {args.repeats} run{'s' if args.repeats > 1 else ''}, "
              f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, {platform.processor() or platform.machine()}\n\n"
              "| training | tutorial recipe | course_utils | speed-up |\n| --- | --- | --- | --- |\n")
    table = header + "\n".join(rows) + "\n"
    print("\n" + table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
