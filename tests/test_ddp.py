"""course_utils.ddp: two real processes started by torchrun compute the gradient of the whole batch and
stay in sync; the hymenoptera path writes a model that finetuned.load can rebuild."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from course_utils import ddp, finetuned
from course_utils.surgery import eval_frozen_batchnorm

ROOT = Path(__file__).resolve().parent.parent
LR, WEIGHT_DECAY = 0.05, 0.01


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m course_utils.ddp ARGS`` (``python -m torch.distributed.run``
    is what the ``torchrun`` command runs), with this checkout importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "course_utils.ddp", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One epoch of the tiny model on two CPU processes: 16 training images, 8 per process, one step."""
    folder = tmp_path_factory.mktemp("ddp")
    result = torchrun("--tiny", "--cpu", "--epochs", "1", "--batch-size", "8", "--lr", str(LR),
                      "--weight-decay", str(WEIGHT_DECAY), "--output", str(folder / "tiny.pt"),
                      "--report", str(folder), cwd=folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return result, ranks, folder


def single_process_step():
    """The same model, one AdamW step on all 16 training images in one batch, in one process."""
    model = ddp.tiny_model(seed=0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.requires_grad_(False)  # what --bn frozen (the default) does
    model.train()
    eval_frozen_batchnorm(model)
    train_set, _ = ddp.tiny_datasets(seed=0)
    images, labels = train_set.tensors
    nn.functional.cross_entropy(model(images), labels).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    ddp.build_optimizer(model, lr=LR, weight_decay=WEIGHT_DECAY).step()
    return grads, model.state_dict(), initial


def test_two_ranks_average_to_the_full_batch_gradient(two_process_run):
    _, ranks, _ = two_process_run
    full_batch, _, _ = single_process_step()
    assert set(full_batch) == {"3.weight", "3.bias", "8.weight", "8.bias"}, "only the unfrozen conv and head train"
    for rank, report in enumerate(ranks):
        assert set(report["grads"]) == set(full_batch), f"rank {rank}: frozen parameters must get no gradient"
        for name, grad in full_batch.items():
            torch.testing.assert_close(report["grads"][name], grad, atol=1e-6, rtol=1e-5, msg=f"rank {rank} {name}")


def test_ranks_stay_in_sync_and_take_the_single_process_step(two_process_run):
    result, ranks, _ = two_process_run
    _, stepped, initial = single_process_step()
    for name, tensor in ranks[0]["state_dict"].items():
        assert torch.equal(tensor, ranks[1]["state_dict"][name]), f"{name} differs between the ranks"
        torch.testing.assert_close(tensor, stepped[name], atol=1e-6, rtol=1e-5, msg=name)
    for name in ("0.weight", "1.weight", "1.running_mean", "4.running_var"):  # frozen conv and BatchNorms
        assert torch.equal(ranks[0]["state_dict"][name], initial[name]), f"frozen {name} changed"
    assert not torch.equal(ranks[0]["state_dict"]["8.weight"], initial["8.weight"]), "the head must have trained"
    assert "weights identical on all 2 processes: largest difference 0.0e+00" in result.stdout


def test_rank_zero_writes_one_checkpoint_with_the_fit_history(two_process_run):
    _, ranks, folder = two_process_run
    assert sorted(p.name for p in folder.iterdir()) == ["rank0.pt", "rank1.pt", "tiny.pt"]  # no temporary files
    saved = torch.load(folder / "tiny.pt", weights_only=True)
    assert [sorted(h) for h in saved["history"]] == [
        ["epoch", "seconds", "train_acc", "train_loss", "val_acc", "val_loss"]]
    def measured(history):  # the seconds are each process's own clock
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]
    assert measured(saved["history"]) == measured(ranks[0]["history"]) == measured(ranks[1]["history"])
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in ranks[0]["state_dict"].items())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_hymenoptera_path_in_one_process_saves_a_loadable_model(tiny_dataset, tmp_path, monkeypatch):
    """The real (non-tiny) path, as one process of one: backbone, image folders, finetuned.save."""
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    output = tmp_path / "model.pt"
    history = ddp.main(["--cpu", "--data", str(tiny_dataset), "--epochs", "2", "--batch-size", "6",
                        "--image-size", "32", "--train-stages", "1", "--output", str(output)])
    assert [h["epoch"] for h in history] == [1, 2]
    loaded = finetuned.load(output)
    assert loaded.classes == ["cats", "dogs", "owls"] and loaded.preprocessing.crop == 32
    assert loaded.info["history"] == history and loaded.info["val_acc"] == max(h["val_acc"] for h in history)
    assert loaded.model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_started_without_torchrun_says_how_to_start(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="start this script with torchrun"):
        ddp.init_distributed(cpu=True)


def test_sync_batchnorm_on_cpu_and_nothing_trainable_are_refused():
    cpu = ddp.Context(rank=0, world_size=2, device=torch.device("cpu"), backend="gloo")
    with pytest.raises(ValueError, match="SyncBatchNorm\\) works only on CUDA"):
        ddp.wrap(ddp.tiny_model(), cpu, bn="sync")
    with pytest.raises(ValueError, match="bn must be one of \\('frozen', 'train', 'sync'\\), got 'off'"):
        ddp.wrap(ddp.tiny_model(), cpu, bn="off")
    with pytest.raises(ValueError, match="no trainable parameter"):
        ddp.wrap(ddp.tiny_model().requires_grad_(False), cpu, bn="train")


def test_validation_shards_cover_every_image_once():
    items = list(range(10))
    parts = [list(ddp.val_shard(items, ddp.Context(r, 3, torch.device("cpu"), "gloo"))) for r in range(3)]
    assert sorted(sum(parts, [])) == items and [len(p) for p in parts] == [4, 3, 3]
    with pytest.raises(ValueError, match="2 validation images cannot be shared by 3 processes"):
        ddp.val_shard([0, 1], ddp.Context(0, 3, torch.device("cpu"), "gloo"))


def test_bad_command_line_values_are_refused(capsys):
    with pytest.raises(SystemExit):
        ddp.parse_args(["--epochs", "0"])
    assert "--epochs and --batch-size must be positive, got 0 and 16" in capsys.readouterr().err
