"""The full grid of notebook 09: every strategy, training-set size and seed on the near and the far domain.

Notebook 09 writes the grid's loop out and runs the part of it that fits its time on 2 CPU cores (its PLAN cell:
5, 20 and all images per class; scratch with one seed, on EuroSAT at 5 per class only; full fine-tuning not at
all). This script runs all of it through ``scenarios.run_grid`` (the same loop, which the notebook checks
against its own on one cell) with the same images, features, budget and validation sets, prints a Markdown table
of accuracies (seed-averaged, 95% bootstrap intervals over the validation images, the seeds' range) and the
paired differences behind each rule of thumb, and writes both to ``--output``.

Run: ``python benchmarks/transfer_scenarios.py [--seeds 3] [--threads N] [--device cuda] [--output FILE]
[--no-readme]``; the tables also replace the ``transfer_scenarios`` section of README.md.
Features are cached under ``data.runs_root()``, shared with the notebook.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from readme_section import machine_line, write_section

from course_utils import data, models, stats, train
from course_utils.models import surgery, weights
from course_utils.transfer import domains, probes, scenarios, verdicts

BACKBONE, SIZE, EUROSAT_PER_CLASS = "efficientnet_lite0", 96, {"train": 100, "val": 50}  # as in notebook 09
NEAR, FAR = "ants/bees (near)", "EuroSAT (far)"
SIZES = [5, 20, 80, None]
RULES = [("head: earlier", "head: last"), ("head: last", "partial"), ("head: last", "full"),
         ("partial", "scratch"), ("full", "scratch")]


def build_domains(
    model: torch.nn.Module, pre: weights.Preprocessing, budget: scenarios.Budget, device: torch.device,
) -> list[scenarios.Domain]:
    """Both domains with their cached stage features, the earlier stage chosen on training data (as in 09)."""
    stages = surgery.stages(model)[1:-1]
    split = surgery.stages(model)[-budget.partial_stages - 1]
    splits = {NEAR: domains.hymenoptera_images(size=SIZE, preprocessing=pre),
              FAR: domains.eurosat_images(size=SIZE, preprocessing=pre, per_class=EUROSAT_PER_CLASS)}
    built = []
    for name, split_sets in splits.items():
        (train_x, train_maps, train_y), (val_x, val_maps, val_y) = (
            probes.stage_features(model, split_sets[part], stages=stages, maps=[split], device=device,
                                  cache_dir=data.runs_root() / "stage_features") for part in ("train", "val"))
        earlier, _ = probes.choose_stage(train_x, train_y, candidates=stages[:stages.index("conv_head")])
        built.append(scenarios.Domain(name, split_sets["train"].images, train_y, split_sets["val"].images, val_y,
                                      train_x, val_x, train_maps, val_maps, last_stage="bn2", earlier_stage=earlier))
    return built


def report(rows: list[scenarios.CellResult], built: list[scenarios.Domain], header: str) -> str:
    """The accuracy table, the baselines and the paired differences, as Markdown."""
    lines = [header, "", verdicts.markdown_table(verdicts.summarise(rows)), ""]
    for domain in built:
        lines.append(f"- {domain.name}: majority class {stats.majority_baseline(domain.val_labels):.1%}, chance "
                     f"{stats.chance_level(int(domain.val_labels.max()) + 1):.1%}, {len(domain.val_labels)} validation "
                     f"images, earlier stage {domain.earlier_stage} (chosen on training data)")
    size_names = ["all" if n is None else str(n) for n in SIZES]
    lines += ["", "Paired differences (seed-averaged, 95% interval over validation images) and their verdict:", "",
              "| domain | difference | " + " | ".join(f"{n} per class" for n in size_names) + " |",
              "| --- | --- |" + " --- |" * len(SIZES)]
    for domain in built:
        for better, worse in RULES:
            cells = []
            for n in SIZES:
                gap = verdicts.difference(rows, domain=domain.name, better=better, worse=worse, per_class=n)
                cells.append(f"{gap.value:+.1%} [{gap.low:+.1%}, {gap.high:+.1%}] {verdicts.verdict(gap)}")
            lines.append(f"| {domain.name} | {better} minus {worse} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the fastest available)")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: <runs_root>/benchmarks/transfer_scenarios.md")
    parser.add_argument("--no-readme", action="store_true", help="do not write the tables into README.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    output = args.output or data.runs_root() / "benchmarks" / "transfer_scenarios.md"
    start, cpu_start = time.perf_counter(), time.process_time()
    device = train.select_device(args.device)
    model, pre = models.load_backbone(BACKBONE)
    budget = scenarios.Budget()
    built = build_domains(model, pre, budget, device)
    rows = scenarios.run_grid(built, strategies=scenarios.STRATEGIES, sizes=SIZES, seeds=list(range(args.seeds)),
                              backbone=BACKBONE, pretrained=model, budget=budget, device=device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} torch threads"
    header = (f"Transfer scenarios, {BACKBONE}, ants/bees and EuroSAT at {SIZE} px, {args.seeds} seeds, {budget}; "
              f"{device.type} ({where}), torch {torch.__version__}, "
              f"{platform.machine()}; {time.perf_counter() - start:.0f} s wall, "
              f"{time.process_time() - cpu_start:.0f} s CPU")
    text = report(rows, built, header)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"\n(written to {output})")
    if not args.no_readme:
        write_section("transfer_scenarios", machine_line(threads=torch.get_num_threads()) + "\n\n" + text)
        print("README.md: the transfer_scenarios section rewritten")


if __name__ == "__main__":
    main()
