"""Transfer learning: the freezable ResNet18 and its starting weights, the LR
range test over layer groups, and tiny real runs of the transfer stages
through main(params): stage 1 leaves the backbone untouched, stage 2 gives each
layer group its own LR and starts from stage 1's weights, the best (not the
last) weights are kept."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from dlpipe.config import LRRangeTest, PlainSchedule, SGD, Train
from dlpipe.errors import PipelineError
from dlpipe.models.lenet import LeNet
from dlpipe.models.resnet import GROUPS, ResNet18, group_lrs, imagenet_file, load_backbone
from dlpipe.stages import (evaluate_transfer, fetch_classifier, fetch_transfer, lr_find_transfer_finetune,
                           lr_find_transfer_head, prepare_classifier, prepare_transfer, pretrain_transfer_backbone,
                           train_transfer_finetune, train_transfer_head)
from dlpipe.stages import _transfer as tr
from dlpipe.training import lr_finder
from dlpipe.training.loop import predict
from dlpipe.training import live
from dlpipe.training.schedules import build_optimizer, build_scheduler
from dlpipe.workflow_graph import load_stages
from test_classifier_data import make_params, run_stages
from test_transfer_data import image_folder

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "transfer.augment.image_size": 32,
    "transfer.pretrain.train.epochs": 1, "transfer.pretrain.train.max_batches": 2,
    "transfer.head.lr_find.num_iter": 10, "transfer.finetune.lr_find.num_iter": 10,
    "transfer.head.train.epochs": 2, "transfer.head.train.max_batches": 2,
    "transfer.finetune.train.epochs": 2, "transfer.finetune.train.max_batches": 2,
}
STAGES = (fetch_classifier, prepare_classifier, fetch_transfer, prepare_transfer, pretrain_transfer_backbone,
          lr_find_transfer_head, train_transfer_head, lr_find_transfer_finetune, train_transfer_finetune,
          evaluate_transfer)
PNG = b"\x89PNG\r\n\x1a\n"


def load(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def history(stage: str, root: Path = Path(".")) -> list[dict]:
    return live.read_history(root / "dvclive" / stage)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Every transfer stage once, on tiny params; tests only read this folder."""
    root = tmp_path_factory.mktemp("transfer_run")
    run_stages(root, TINY, STAGES)
    return root


@pytest.fixture
def run_copy(tiny_run, tmp_path, monkeypatch):
    """A private copy of the tiny run to rerun stages in; returns a params maker."""
    shutil.copytree(tiny_run, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return lambda overrides: make_params(tmp_path, {**TINY, **overrides})


# --------------------------------------------------------------------------- model


def test_resnet18_is_torchvisions_and_freezes_its_backbone():
    model = ResNet18(num_classes=2)
    reference = torchvision.models.resnet18(num_classes=2)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    model.freeze_backbone(True).train()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorms and not any(m.training for m in batchnorms)  # eval mode under model.train()
    assert model.training and model.fc.training
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters()) and all(m.training for m in batchnorms)
    # The layer groups hold every parameter once, in network order.
    groups = model.layer_groups()
    assert len(groups) == len(GROUPS) == 5
    ids = [id(p) for group in groups for p in group]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(ids) == len(set(ids))
    assert groups[0][0] is model.conv1.weight and groups[-1][-1] is model.fc.bias


def test_group_lrs_are_geometric_from_lr_over_spread_to_lr():
    lrs = group_lrs(0.01, 100)
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(0.01)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([100 ** 0.25] * 4)


def test_imagenet_weights_absent_offline_name_the_file_to_place(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on: no network, whatever this machine has
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for key in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(key, f"http://127.0.0.1:{port}")
    for key in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(key, raising=False)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_file() == expected
    with pytest.raises(PipelineError) as info:
        load_backbone(ResNet18(2), "imagenet", tr.BACKBONE)
    message = str(info.value)
    assert f"copy resnet18-f37072fd.pth (from https://download.pytorch.org/models/resnet18-f37072fd.pth) to {expected}" in message
    assert "TORCH_HOME" in message
    assert not expected.exists()
    assert not expected.parent.exists() or list(expected.parent.iterdir()) == []  # no half download left


def test_imagenet_weights_come_from_torch_hubs_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(3)
    pretrained = torchvision.models.resnet18()  # 1000 classes, as the real file
    imagenet_file().parent.mkdir(parents=True)
    torch.save(pretrained.state_dict(), imagenet_file())
    model = ResNet18(num_classes=2)
    fc_before = model.fc.weight.clone()
    assert "imagenet" in load_backbone(model, "imagenet", tr.BACKBONE)
    assert torch.equal(model.layer4[1].conv2.weight, pretrained.layer4[1].conv2.weight)
    assert torch.equal(model.bn1.running_var, pretrained.bn1.running_var)
    assert torch.equal(model.fc.weight, fc_before)  # the new head is not the file's


def test_wrong_weights_files_get_a_clear_error(tmp_path):
    bad_shape = ResNet18(10).state_dict()
    bad_shape["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(bad_shape, tmp_path / "grey.pt")
    with pytest.raises(PipelineError, match=rf"{tmp_path}/grey.pt: not ResNet18 weights: wrong shape: "
                                            r"conv1.weight \(64, 1, 7, 7\) \(ResNet18 has \(64, 3, 7, 7\)\)"):
        load_backbone(ResNet18(2), str(tmp_path / "grey.pt"), tr.BACKBONE)
    torch.save(LeNet(10).state_dict(), tmp_path / "lenet.pt")
    with pytest.raises(PipelineError, match=r"lenet.pt: not ResNet18 weights: \d+ missing .*\d+ unexpected"):
        load_backbone(ResNet18(2), str(tmp_path / "lenet.pt"), tr.BACKBONE)
    torch.save({"model": LeNet(10)}, tmp_path / "pickled_module.pt")  # needs pickled code: refused
    with pytest.raises(PipelineError, match=r"pickled_module.pt: not a loadable weights file"):
        load_backbone(ResNet18(2), str(tmp_path / "pickled_module.pt"), tr.BACKBONE)
    with pytest.raises(PipelineError, match=r"models/transfer_backbone.pt: not found; run pretrain_transfer_backbone"):
        load_backbone(ResNet18(2), "pipeline", tmp_path / "models/transfer_backbone.pt")


# --------------------------------------------------------------------------- LR range test over groups


class RecordingSGD(torch.optim.SGD):
    def step(self, closure=None):
        self.seen.append([group["lr"] for group in self.param_groups])
        return super().step(closure)


def test_range_test_sweeps_the_last_groups_lr_with_the_others_at_their_share():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    from dlpipe.data.loaders import TensorLoader

    loader = TensorLoader(torch.randn(64, 4), torch.randint(0, 2, (64,)), 16, shuffle=True)
    optimizer = RecordingSGD([{"params": model[0].parameters(), "lr": 0.5}, {"params": model[2].parameters(), "lr": 0.5}],
                             lr=0.5, momentum=0.9)
    optimizer.seen = []
    cfg = LRRangeTest(start_lr=1e-4, end_lr=1.0, num_iter=12, step_mode="exp", smooth=0.05, diverge_threshold=1e6,
                 rule="valley")
    record = lr_finder.range_test(model, optimizer, torch.nn.functional.cross_entropy, loader, cfg,
                                  torch.device("cpu"), lr_ratios=[0.01, 1.0])
    assert record["lr_ratios"] == [0.01, 1.0]
    seen = optimizer.seen
    assert len(seen) == len(record["lrs"]) == 12
    assert [lrs[1] for lrs in seen] == pytest.approx(record["lrs"])  # the recorded LR is the last group's
    assert all(lo == pytest.approx(hi * 0.01) for lo, hi in seen)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.5]  # restored afterwards


def test_finetune_optimizer_and_one_cycle_use_each_groups_lr():
    model = ResNet18(2)
    cfg = Train(lr=0.01, optimizer=SGD("sgd", weight_decay=0.0, momentum=0.9), schedule=PlainSchedule("onecycle"),
                batch_size=8, epochs=3, patience=0, min_delta=0.0)
    optimizer = build_optimizer(tr.finetune_groups(model, 0.01, 100), cfg, 0.01)
    lrs = group_lrs(0.01, 100)
    scheduler, per_batch = build_scheduler(optimizer, cfg, steps_per_epoch=4)
    assert per_batch and [g["max_lr"] for g in optimizer.param_groups] == pytest.approx(lrs)
    assert [len(g["params"]) for g in optimizer.param_groups] == [len(p) for p in model.layer_groups()]


def test_finetune_lr_defaults_to_a_tenth_of_the_heads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no reports/lr_find here
    params = make_params(tmp_path, {"transfer.head.train.lr": 0.02})
    assert tr.finetune_lr(params) == pytest.approx(0.002)
    params = make_params(tmp_path, {"transfer.finetune.train.lr": "auto"})
    with pytest.raises(PipelineError, match=r"'transfer.finetune.train.lr' is 'auto' but reports/lr_find/transfer_finetune.json"):
        tr.finetune_lr(params)
    with pytest.raises(PipelineError, match=r"'transfer.augment.crop_scale': \[0.9, 0.5\] is not a range"):
        tr.check_range([0.9, 0.5], "transfer.augment.crop_scale")


# --------------------------------------------------------------------------- tiny runs of the stages


def test_tiny_run_writes_the_output_contract(tiny_run):
    root = tiny_run
    backbone, head, finetune = (load(root / f"models/transfer_{n}.pt") for n in ("backbone", "head", "finetune"))
    torchvision.models.resnet18(num_classes=10).load_state_dict(backbone)  # digits: 10 classes
    torchvision.models.resnet18(num_classes=2).load_state_dict(head)  # faces: 2 classes
    torchvision.models.resnet18(num_classes=2).load_state_dict(finetune)
    metrics = json.loads((root / "reports/details/transfer.json").read_text())
    assert set(metrics) == {"head_val_accuracy", "finetune_val_accuracy", "head_gain", "random_head_val_accuracy",
                            "random_finetune_val_accuracy", "finetune_gain", "val_images", "finetune_misclassified"}
    # The few-shot faces: 10 of each class train, the other 180 images are the validation images.
    assert metrics["val_images"] == 180 and all(isinstance(v, (int, float)) for v in metrics.values())
    assert metrics["finetune_misclassified"] == round((1 - metrics["finetune_val_accuracy"]) * 180)
    headline = json.loads((root / "reports/metrics/transfer.json").read_text())
    assert headline == {k: metrics[k] for k in ("head_val_accuracy", "finetune_val_accuracy", "head_gain")}
    for stage in ("head", "finetune"):
        assert metrics[f"{stage}_gain"] == pytest.approx(
            metrics[f"{stage}_val_accuracy"] - metrics[f"random_{stage}_val_accuracy"])
        for suffix, prefix in (("", ""), ("_random", "random_")):
            rows = history(f"train_transfer_{stage}{suffix}", root)
            assert [int(r["epoch"]) for r in rows] == [1, 2]
            assert {"lr", "train_loss", "val_loss", "val_accuracy"} <= set(rows[0])
            # The weights kept are the best epoch's: evaluate's accuracy is the best of the curve.
            assert metrics[f"{prefix}{stage}_val_accuracy"] == pytest.approx(
                max(float(r["val_accuracy"]) for r in rows), abs=1e-6)
            torchvision.models.resnet18(num_classes=2).load_state_dict(load(root / f"models/transfer_{stage}{suffix}.pt"))
            record = json.loads((root / f"reports/lr_find/transfer_{stage}{suffix}.json").read_text())
            assert len(record["lrs"]) == 10 and record["suggested_lr"] > 0
            assert (root / f"reports/lr_find/transfer_{stage}{suffix}.png").read_bytes()[:8] == PNG
            assert (root / f"checkpoints/transfer_{stage}/last{suffix}.pt").is_file()
    assert (root / "reports/plots/transfer/misclassified.png").read_bytes()[:8] == PNG
    assert [r["epoch"] for r in history("pretrain_transfer_backbone", root)] == [1]


def test_stage1_leaves_every_backbone_tensor_unchanged(tiny_run):
    """Parameters (no gradients) and BatchNorm buffers (eval mode) alike."""
    backbone, head = load(tiny_run / "models/transfer_backbone.pt"), load(tiny_run / "models/transfer_head.pt")
    shared = [k for k in head if not k.startswith("fc.")]
    assert any("running_mean" in k for k in shared) and any("num_batches_tracked" in k for k in shared)
    for key in shared:
        assert torch.equal(head[key], backbone[key]), key
    torch.manual_seed(42)
    fresh = ResNet18(2)  # the stage's seeded new fc
    assert not torch.equal(head["fc.weight"], fresh.fc.weight)  # ...which training moved


def test_the_baseline_backbone_is_random_and_the_rest_is_paired(tiny_run):
    """The random run's frozen backbone is the seeded initialisation, not the pretrained backbone;
    its fc started from the same weights as the pretrained run's."""
    backbone, head = load(tiny_run / "models/transfer_backbone.pt"), load(tiny_run / "models/transfer_head.pt")
    random_head = load(tiny_run / "models/transfer_head_random.pt")
    torch.manual_seed(42)
    fresh = ResNet18(2).state_dict()  # the stage's seeded network (params seed 42)
    convs = [k for k in random_head if k.endswith("conv1.weight") or k == "conv1.weight"]
    assert convs
    for key in convs:
        assert not torch.allclose(random_head[key], backbone[key]), key
        assert not torch.allclose(random_head[key], head[key]), key
    for key in (k for k in random_head if not k.startswith("fc.")):
        assert torch.equal(random_head[key], fresh[key]), key  # frozen: never moved from the init
    finetune_random = load(tiny_run / "models/transfer_finetune_random.pt")
    assert not torch.equal(finetune_random["layer4.1.conv2.weight"], random_head["layer4.1.conv2.weight"])
    first = [json.loads((tiny_run / f"reports/lr_find/transfer_head{s}.json").read_text())["lrs"][:3]
             for s in ("", "_random")]
    assert first[0] == first[1]  # the same sweep for both backbones


def test_stage2_gives_every_layer_group_its_own_lr(tiny_run):
    state = load(tiny_run / "checkpoints/transfer_finetune/last.pt")
    groups = state["optimizer"]["param_groups"]
    head_lr = json.loads((tiny_run / "reports/lr_find/transfer_head.json").read_text())["suggested_lr"]
    lr = head_lr / 10  # lr: head_div_10
    assert [g["max_lr"] for g in groups] == pytest.approx(group_lrs(lr, 100))
    assert groups[0]["max_lr"] == pytest.approx(lr / 100) and groups[-1]["max_lr"] == pytest.approx(lr)
    assert [len(g["params"]) for g in groups] == [len(p) for p in ResNet18(2).layer_groups()]
    # ...and stage 1's optimizer held the fc only.
    head_groups = load(tiny_run / "checkpoints/transfer_head/last.pt")["optimizer"]["param_groups"]
    assert [len(g["params"]) for g in head_groups] == [2]


def test_stage2_starts_from_the_head_stages_weights(run_copy):
    head = load("models/transfer_head.pt")
    head["fc.bias"] += torch.tensor([5.0, -5.0])  # a mark no random start would carry
    torch.save(head, "models/transfer_head.pt")
    params = run_copy({"transfer.finetune.train.lr": 1.0e-12, "transfer.finetune.train.epochs": 1,
                       "transfer.finetune.train.max_batches": 1})
    train_transfer_finetune.main(params)
    finetune = load("models/transfer_finetune.pt")
    trainable = {name for name, _ in ResNet18(2).named_parameters()}
    for key in trainable:  # an LR of 1e-12 leaves the weights where they started
        assert torch.allclose(finetune[key], head[key], atol=1e-6), key
    assert finetune["fc.bias"].tolist() == pytest.approx(head["fc.bias"].tolist(), abs=1e-6)


def test_the_best_not_the_last_weights_are_kept(run_copy):
    # A constant, far too large LR for the new fc: validation accuracy climbs,
    # then collapses; on the CPU this is deterministic for the seed. 75 training
    # images per class: two batches of 32 an epoch (the 10-shot split's one batch never collapsed).
    params = run_copy({"transfer.data.train_per_class": 75, "transfer.head.train.lr": 1.0,
                       "transfer.head.train.optimizer": {"name": "sgd", "weight_decay": 1.0e-4, "momentum": 0.9},
                       "transfer.head.train.schedule": {"name": "constant"}, "transfer.head.train.epochs": 4})
    fetch_transfer.main(params)
    prepare_transfer.main(params)
    train_transfer_head.main(params)
    rows = history("train_transfer_head")
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert accuracies[-1] < max(accuracies) - 0.1, accuracies  # the case this test needs
    best = ResNet18(2)
    best.load_state_dict(load("models/transfer_head.pt"))
    outputs, targets = predict(best, tr.val_loader(params, torch.device("cpu")))
    assert (outputs.argmax(1) == targets).float().mean().item() == pytest.approx(max(accuracies), abs=1e-6)
    last = load("checkpoints/transfer_head/last.pt")["model"]
    assert not torch.equal(last["fc.weight"], best.state_dict()["fc.weight"])


def test_tiny_run_on_your_own_folder(run_copy):
    """transfer.data.name: folder, one folder of three classes split here: every stage after the
    backbone's pretraining reruns on it, and the network gets a 3-class head."""
    image_folder(Path("my_pictures"), {"blue": 8, "green": 8, "red": 8})
    params = run_copy({"transfer.data.name": "folder", "transfer.data.folder": "my_pictures",
                       "transfer.data.folder_val_fraction": 0.25})
    for stage in STAGES[2:]:
        if stage is not pretrain_transfer_backbone:  # reads the classifier data only: kept from the tiny run
            stage.main(params)
    source = json.loads(Path("data/raw/transfer/source.json").read_text())
    assert (source["name"], source["folder"], source["class_names"]) == ("folder", "my_pictures",
                                                                         ["blue", "green", "red"])
    for name in ("head", "finetune"):
        torchvision.models.resnet18(num_classes=3).load_state_dict(load(f"models/transfer_{name}.pt"))
    metrics = json.loads(Path("reports/details/transfer.json").read_text())
    assert metrics["val_images"] == 6 and 0 <= metrics["finetune_val_accuracy"] <= 1
    assert metrics["finetune_misclassified"] == round((1 - metrics["finetune_val_accuracy"]) * 6)
    assert Path("reports/plots/transfer/misclassified.png").read_bytes()[:8] == PNG


def test_evaluate_without_weights_names_the_file(run_copy):
    Path("models/transfer_finetune.pt").unlink()
    with pytest.raises(PipelineError, match="models/transfer_finetune.pt: weights file not found"):
        evaluate_transfer.main(run_copy({}))


# --------------------------------------------------------------------------- the graph


def test_dvc_stages_read_only_what_they_use():
    stages = {s.name: s for s in load_stages(REPO / "dvc.yaml")}
    for name in ("lr_find_transfer_head", "lr_find_transfer_finetune"):
        assert not any("epochs" in key or key.endswith(".train") for key in stages[name].params), name
    assert "models/transfer_head.pt" in stages["train_transfer_finetune"].deps
    assert "models/transfer_backbone.pt" in stages["train_transfer_head"].deps
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate_transfer"]
    # in git (cache: false): `dvc metrics diff` reads old commits without a DVC remote
    assert raw["metrics"] == [{"reports/metrics/transfer.json": {"cache": False}}]
