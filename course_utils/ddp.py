"""Fine-tuning on several processes with DistributedDataParallel (DDP), started by ``torchrun``.

    torchrun --standalone --nproc_per_node=2 -m course_utils.ddp --epochs 3

Every process (a *rank*) holds a full copy of the model and trains on its own share of each epoch's
images (``DistributedSampler``). After each backward pass DDP averages the gradients of all ranks
(an all-reduce), so every rank takes the same optimizer step and the copies stay identical. The
processes talk over ``gloo`` on CPUs and over ``nccl`` on NVIDIA GPUs (one process per GPU). Rank 0
alone writes the checkpoint, once, at the end.

Frozen parameters: DDP synchronises only the parameters that require a gradient *when it is built*, so
freeze first and wrap afterwards (for a second stage with more layers unfrozen, build a new DDP
wrapper). Every trainable parameter then gets a gradient in every step, so ``find_unused_parameters``
stays False (True would search the autograd graph for unused parameters after every forward pass).

BatchNorm (``--bn``): a BatchNorm in train mode normalises with the statistics of its *own process's*
batch, so two processes with 16 images each are not one process with 32. ``frozen`` (default) freezes
every BatchNorm (eval mode, running statistics fixed): then the averaged gradient equals exactly the
gradient of the whole global batch, which ``tests/test_ddp.py`` checks. ``train`` lets them train on
per-process statistics (DDP copies rank 0's running statistics to all ranks before every forward
pass); ``sync`` converts them to ``SyncBatchNorm`` (statistics over all processes; GPUs only).

``--tiny`` trains a small CNN on random images instead of the backbone on hymenoptera: it checks a
distributed set-up in seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

BN_MODES = ("frozen", "train", "sync")


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, how many processes there are, its device and backend."""

    rank: int
    world_size: int
    device: torch.device
    backend: str


def init_distributed(*, cpu: bool = False) -> Context:
    """Join the process group that torchrun set up (``gloo`` on CPU, ``nccl`` on CUDA GPUs).

    Raises:
        RuntimeError: The process was not started by torchrun, or there are fewer GPUs than processes.

    Used in: 10_deployment_and_scaling.ipynb (through the torchrun command)
    """
    import torch.distributed as dist

    if "RANK" not in os.environ or "LOCAL_RANK" not in os.environ:
        raise RuntimeError("No RANK/LOCAL_RANK in the environment: start this script with torchrun, e.g. "
                           "`torchrun --standalone --nproc_per_node=2 -m course_utils.ddp --tiny`.")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available() and not cpu:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"Process {local_rank} needs GPU {local_rank}, but this machine has "
                               f"{torch.cuda.device_count()}. Use --nproc_per_node=<number of GPUs>, or --cpu.")
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend=backend)
    return Context(dist.get_rank(), dist.get_world_size(), device, backend)


def wrap(model: nn.Module, ctx: Context, *, bn: str = "frozen") -> nn.Module:
    """Move ``model`` to this process's device and wrap it in DDP; freeze parameters *before* this.

    Args:
        model: The model with its frozen parts already frozen (``requires_grad=False``).
        ctx: From :func:`init_distributed`.
        bn: ``"frozen"``, ``"train"`` or ``"sync"``: what BatchNorm layers do (see the module docstring).

    Returns:
        The ``DistributedDataParallel`` wrapper; the model itself is its ``.module``.

    Raises:
        ValueError: Unknown ``bn``, ``"sync"`` on a CPU, or no trainable parameter at all.

    Used in: 10_deployment_and_scaling.ipynb (through the torchrun command)
    """
    from torch.nn.parallel import DistributedDataParallel

    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}.")
    if bn == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.requires_grad_(False)  # train_one_epoch then keeps them in eval mode
    elif bn == "sync":
        if ctx.device.type != "cuda":
            raise ValueError("bn='sync' (SyncBatchNorm) works only on CUDA GPUs under DDP; on CPUs use "
                             "bn='frozen' (exact large-batch gradients) or bn='train'.")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("The model has no trainable parameter: unfreeze at least the head before wrapping.")
    model.to(ctx.device)
    # Before every forward pass DDP copies rank 0's buffers (BatchNorm running statistics) to all ranks.
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                   find_unused_parameters=False)


def shard_loaders(train_set, val_part, ctx: Context, *, batch_size: int, seed: int = 0):
    """Loaders for this rank: its shuffled share of ``train_set`` (``DistributedSampler``) and its
    validation part (from :func:`val_shard`).

    Call ``train_loader.sampler.set_epoch(epoch)`` before each epoch (:func:`fit_distributed` does):
    without it every epoch repeats the first epoch's order.

    Used in: 10_deployment_and_scaling.ipynb (through the torchrun command)
    """
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    return DataLoader(train_set, batch_size=batch_size, sampler=sampler), DataLoader(val_part, batch_size=2 * batch_size)


def val_shard(dataset, ctx: Context):
    """Every ``world_size``-th item from this rank on: each image is evaluated exactly once over all ranks
    (``DistributedSampler`` would pad the shards with repeated images to make them equal).

    Raises:
        ValueError: Fewer items than processes.

    Used in: 10_deployment_and_scaling.ipynb (through the torchrun command)
    """
    from torch.utils.data import Subset

    if len(dataset) < ctx.world_size:
        raise ValueError(f"{len(dataset)} validation images cannot be shared by {ctx.world_size} processes; "
                         "use fewer processes (--nproc_per_node).")
    return Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))


def _mean_over_ranks(metrics: dict[str, float], count: int, ctx: Context) -> dict[str, float]:
    """Loss and accuracy of all ranks together: sums of ``mean * count`` over ranks, divided by all counts."""
    import torch.distributed as dist

    sums = torch.tensor([metrics["loss"] * count, metrics["acc"] * count, count], dtype=torch.float64,
                        device=ctx.device)
    dist.all_reduce(sums)
    return {"loss": (sums[0] / sums[2]).item(), "acc": (sums[1] / sums[2]).item()}


def largest_difference_between_ranks(model: nn.Module, ctx: Context) -> float:
    """Largest absolute difference between this model's parameters on any rank and on rank 0."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    gap = (flat - reference).abs().max()
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    return gap.item()


def fit_distributed(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, train_loader, val_loader,
    ctx: Context, *, epochs: int, scheduler=None, scaler=None,
) -> list[dict[str, float]]:
    """``train.fit`` for DDP: the same history on every rank, the best weights loaded at the end.

    Training reuses ``train.train_one_epoch`` on the DDP wrapper (its backward pass averages the
    gradients); validation runs ``train.evaluate`` on the bare model (the ranks' shards may differ by one
    batch, and DDP's forward would wait for the others). Both are averaged over all ranks.

    Used in: 10_deployment_and_scaling.ipynb (through the torchrun command)
    """
    from course_utils.train import evaluate, train_one_epoch

    history, best, best_state = [], -1.0, None
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)  # a new order each epoch, the same on every rank
        train = train_one_epoch(model, criterion, optimizer, train_loader, ctx.device, scaler=scaler, progress=False)
        train = _mean_over_ranks(train, len(train_loader.sampler), ctx)
        val = evaluate(model.module, criterion, val_loader, ctx.device, progress=False)
        val = _mean_over_ranks(val, len(val_loader.dataset), ctx)
        if scheduler is not None:
            scheduler.step()
        history.append({"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
                        "val_loss": val["loss"], "val_acc": val["acc"], "seconds": time.perf_counter() - start})
        if val["acc"] > best:
            best = val["acc"]
            best_state = {k: v.detach().cpu().clone() for k, v in model.module.state_dict().items()}
        if ctx.rank == 0:
            print(f"epoch {epoch}: train loss {train['loss']:.3f} acc {train['acc']:.3f} | val loss "
                  f"{val['loss']:.3f} acc {val['acc']:.3f} | {1000 * history[-1]['seconds']:.0f} ms", flush=True)
    model.module.load_state_dict(best_state)
    return history


def tiny_model(num_classes: int = 3, *, seed: int = 0) -> nn.Module:
    """A small CNN whose first conv + BatchNorm are frozen, like a backbone's lowest stage."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )
    model[:2].requires_grad_(False)
    return model


def tiny_datasets(*, num_classes: int = 3, train: int = 16, val: int = 8, size: int = 16, seed: int = 0):
    """Random images whose class shows in their mean colour: ``(train_set, val_set)`` TensorDatasets."""
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(seed)
    sets = []
    for count in (train, val):
        labels = torch.arange(count) % num_classes
        images = torch.randn(count, 3, size, size, generator=generator)
        images[:, 0] += labels.float().view(-1, 1, 1)  # the learnable signal
        sets.append(TensorDataset(images, labels))
    return tuple(sets)


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


def _tiny(args, ctx: Context):
    """:func:`tiny_model`, its training set and this rank's validation part (no classes, no preprocessing)."""
    train_set, val_set = tiny_datasets(seed=args.seed)
    return tiny_model(seed=args.seed), train_set, val_shard(val_set, ctx), None, None


def _hymenoptera(args, ctx: Context):
    """The backbone with its last ``args.train_stages`` trainable, the training set and this rank's
    validation part (only those images are decoded)."""
    import torch.distributed as dist

    from course_utils import data, download, models, surgery

    if ctx.rank == 0:
        folder = download.hymenoptera() if args.data is None else Path(args.data)
    dist.barrier()  # rank 0 downloads (if needed) before the others look
    if ctx.rank != 0:
        folder = download.hymenoptera(download=False) if args.data is None else Path(args.data)
    splits = data.find_splits(folder)
    model, pre = models.load_backbone(args.backbone)
    if args.image_size:
        pre = dataclasses.replace(pre, crop=args.image_size, resize=round(args.image_size * pre.resize / pre.crop))
    classes = list(splits["train"].classes)
    models.replace_head(model, len(classes), seed=args.seed)
    surgery.unfreeze_last(model, args.train_stages)
    transforms = data.build_transforms(pre)
    train_set = data.CachedImages(splits["train"], size=pre.resize, transform=transforms["train"])
    val_part = data.CachedImages(val_shard(splits["val"], ctx), size=pre.resize, transform=transforms["val"])
    return model, train_set, val_part, classes, pre


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of ``torchrun ... -m course_utils.ddp``."""
    from course_utils.models import BACKBONES, DEFAULT_BACKBONE

    parser = argparse.ArgumentParser(prog="torchrun --standalone --nproc_per_node=N -m course_utils.ddp",
                                     description="Fine-tune on several processes with DistributedDataParallel.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="images per process per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--backbone", choices=BACKBONES, default=DEFAULT_BACKBONE)
    parser.add_argument("--train-stages", type=int, default=4, help="how many top stages train (the head is one)")
    parser.add_argument("--image-size", type=int, default=None, help="training crop (default: the backbone's)")
    parser.add_argument("--bn", choices=BN_MODES, default="frozen", help="what BatchNorm layers do")
    parser.add_argument("--data", default=None, help="dataset folder (default: hymenoptera, downloaded)")
    parser.add_argument("--output", default=None, help="checkpoint file (default: runs_root()/ddp/...)")
    parser.add_argument("--report", default=None, help="folder for each rank's final gradients and weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="use gloo on the CPU even where GPUs exist")
    parser.add_argument("--amp", action="store_true", help="float16 mixed precision (CUDA only)")
    parser.add_argument("--tiny", action="store_true", help="a small CNN on random images: checks the set-up")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error(f"--epochs and --batch-size must be positive, got {args.epochs} and {args.batch_size}")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Run one process of a distributed fine-tuning; torchrun starts one per GPU or CPU slot."""
    import torch.distributed as dist

    from course_utils.train import atomic_save

    args = parse_args(argv)
    ctx = init_distributed(cpu=args.cpu)
    try:
        torch.manual_seed(args.seed + ctx.rank)  # different augmentation per rank; DDP copies rank 0's weights
        model, train_set, val_part, classes, pre = _tiny(args, ctx) if args.tiny else _hymenoptera(args, ctx)
        ddp_model = wrap(model, ctx, bn=args.bn)
        train_loader, val_loader = shard_loaders(train_set, val_part, ctx, batch_size=args.batch_size, seed=args.seed)
        optimizer = build_optimizer(ddp_model, lr=args.lr, weight_decay=args.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
        scaler = torch.amp.GradScaler("cuda") if args.amp and ctx.device.type == "cuda" else None
        if ctx.rank == 0:
            print(f"{ctx.world_size} processes ({ctx.backend} on {ctx.device.type}); {args.batch_size} images per "
                  f"process per step, {args.batch_size * ctx.world_size} per step in all; "
                  f"{sum(p.numel() for p in ddp_model.parameters() if p.requires_grad):,} trainable parameters",
                  flush=True)
        history = fit_distributed(ddp_model, nn.CrossEntropyLoss(), optimizer, train_loader, val_loader, ctx,
                                  epochs=args.epochs, scheduler=scheduler, scaler=scaler)
        gap = largest_difference_between_ranks(ddp_model.module, ctx)
        val_total = torch.tensor(len(val_part), device=ctx.device)
        dist.all_reduce(val_total)  # each rank evaluated its own part
        if args.report:
            grads = {n: p.grad.cpu() for n, p in ddp_model.module.named_parameters() if p.grad is not None}
            atomic_save({"grads": grads, "state_dict": ddp_model.module.state_dict(), "history": history},
                        Path(args.report) / f"rank{ctx.rank}.pt")
        if ctx.rank == 0:
            output = Path(args.output) if args.output else _default_output(args)
            _save(ddp_model.module, output, args, ctx, history, classes, pre)
            print(f"weights identical on all {ctx.world_size} processes: largest difference {gap:.1e}; "
                  f"best val acc {max(h['val_acc'] for h in history):.3f} on {val_total.item()} validation images; "
                  f"checkpoint {output}", flush=True)
        dist.barrier()
        return history
    finally:
        dist.destroy_process_group()


def _default_output(args) -> Path:
    from course_utils.data import runs_root  # imports torchvision: only when needed

    return runs_root() / "ddp" / ("tiny_ddp.pt" if args.tiny else f"hymenoptera_{args.backbone}_ddp.pt")


def _save(model: nn.Module, output: Path, args, ctx: Context, history, classes, pre) -> None:
    """Rank 0's one checkpoint: ``finetuned.save`` for a backbone, a plain payload for ``--tiny``."""
    from course_utils.train import atomic_save

    info = {"strategy": f"DDP, {ctx.world_size} processes, last {args.train_stages} stages, bn {args.bn}",
            "val_acc": max(h["val_acc"] for h in history), "history": history}
    if args.tiny:
        atomic_save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, **info}, output)
    else:
        from course_utils import finetuned

        finetuned.save(model, output, backbone=args.backbone, classes=classes, preprocessing=pre,
                       image_size=pre.crop, **info)


if __name__ == "__main__":
    main()
