"""LeNet: batched augmentation, normalisation, the model, the classification
task, and a tiny real run of the five stages through main(params) on digits."""

from __future__ import annotations

import ast
import inspect
import json
import textwrap

import pandas as pd
import pytest
import torch

from dlpipe.config import LeNetAugment
from dlpipe.data.augment import EvalTransform, Normalize, TrainTransform, random_crop_flip
from dlpipe.data.classifier_prepared import load_meta, load_split
from dlpipe.errors import PipelineError
from dlpipe.models.lenet import LeNet
from dlpipe.stages import evaluate_lenet, fetch_classifier, lr_find_lenet, prepare_classifier, train_lenet
from dlpipe.stages._lenet import flip_enabled
from dlpipe.training import live
from dlpipe.training.tasks import classification
from test_classifier_data import make_params

PAD = 4


def padded(x: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    return torch.nn.functional.pad(x, (pad, pad, pad, pad))


def windows(image: torch.Tensor, pad: int = PAD) -> dict[tuple[int, int, bool], torch.Tensor]:
    """Every H x W window of the zero-padded image, plain and mirrored."""
    p, (h, w) = padded(image[None], pad)[0], image.shape[-2:]
    out = {}
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = p[:, dy:dy + h, dx:dx + w]
            out[(dy, dx, False)] = window
            out[(dy, dx, True)] = window.flip(-1)
    return out


def matches(image: torch.Tensor, crop: torch.Tensor) -> list[tuple[int, int, bool]]:
    return [key for key, window in windows(image).items() if torch.equal(window, crop)]


@pytest.fixture
def batch():
    # Random pixels: each window of each image is unique, so a crop has one explanation.
    return torch.randint(1, 256, (48, 3, 12, 10), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


# --------------------------------------------------------------------------- augmentation


def test_crop_is_a_shifted_window_of_the_padded_image(batch):
    out = random_crop_flip(batch, torch.Generator().manual_seed(1), PAD, flip=False)
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    found = [matches(image, crop) for image, crop in zip(batch, out)]
    assert all(len(keys) == 1 and not keys[0][2] for keys in found)  # one window each, never mirrored
    offsets = [keys[0][:2] for keys in found]
    # Offsets vary image by image, over the whole range 0..2 x padding in both directions.
    assert len(set(offsets)) > 20
    assert {dy for dy, _ in offsets} == {dx for _, dx in offsets} == set(range(2 * PAD + 1))


def test_flip_mirrors_about_half_of_the_batch(batch):
    out = random_crop_flip(batch, torch.Generator().manual_seed(2), PAD, flip=True)
    found = [matches(image, crop) for image, crop in zip(batch, out)]
    assert all(len(keys) == 1 for keys in found)
    mirrored = sum(keys[0][2] for keys in found)
    assert 10 < mirrored < 38
    # Flip alone (no padding) mirrors whole images or leaves them as they are.
    only_flip = random_crop_flip(batch, torch.Generator().manual_seed(3), 0, flip=True)
    for image, crop in zip(batch, only_flip):
        assert torch.equal(crop, image) or torch.equal(crop, image.flip(-1))


def test_augmentation_is_deterministic_for_a_seed(batch):
    a = random_crop_flip(batch, torch.Generator().manual_seed(5), PAD, flip=True)
    b = random_crop_flip(batch, torch.Generator().manual_seed(5), PAD, flip=True)
    c = random_crop_flip(batch, torch.Generator().manual_seed(6), PAD, flip=True)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert random_crop_flip(batch, torch.Generator(), 0, flip=False) is batch  # nothing to do


def test_augmentation_has_no_per_image_python_loop():
    tree = ast.parse(textwrap.dedent(inspect.getsource(random_crop_flip)))
    loops = [node for node in ast.walk(tree)
             if isinstance(node, (ast.For, ast.While, ast.ListComp, ast.GeneratorExp, ast.SetComp, ast.DictComp))]
    assert loops == []


def test_normalize_uses_the_given_statistics():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = Normalize(mean, std)(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(EvalTransform(Normalize(mean, std))(x), expected, atol=1e-5)
    train = TrainTransform(Normalize(mean, std), crop_padding=0, flip=False)
    assert torch.allclose(train(x, torch.Generator()), expected, atol=1e-5)


@pytest.mark.parametrize(("flip", "dataset", "expected"), [
    ("auto", "digits", False), ("auto", "cifar10", True), (True, "digits", True), (False, "cifar10", False),
])
def test_flip_auto_mirrors_photos_not_digits(flip, dataset, expected):
    assert flip_enabled(LeNetAugment(crop_padding=4, flip=flip), dataset) is expected


# --------------------------------------------------------------------------- model and task


def test_lenet_shapes_and_the_seeds_layers():
    model = LeNet(num_classes=10)
    x = torch.randn(5, 3, 32, 32)
    assert model(x).shape == (5, 10)
    assert model.features(x).shape == (5, 84)
    assert torch.all(model.features(x) >= 0)  # after the ReLU
    assert torch.allclose(model.fc3(model.features(x)), model(x))
    # The CIFAR-10 tutorial's LeNet: the same layer names and sizes, so its state_dict loads as is.
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {"conv1.weight": (6, 3, 5, 5), "conv1.bias": (6,), "conv2.weight": (16, 6, 5, 5),
                      "conv2.bias": (16,), "fc1.weight": (120, 400), "fc1.bias": (120,),
                      "fc2.weight": (84, 120), "fc2.bias": (84,), "fc3.weight": (10, 84), "fc3.bias": (10,)}
    assert sum(p.numel() for p in model.parameters()) == 62006
    wider = LeNet(num_classes=3, channels=(8, 20), hidden=(64, 32))
    assert wider(x).shape == (5, 3) and wider.features(x).shape == (5, 32)
    with pytest.raises(ValueError, match="32 x 32"):
        model(torch.randn(1, 3, 28, 28))


def test_classification_task_keeps_the_later_of_equal_accuracies():
    task = classification()
    assert task.monitor == "val_accuracy" and task.mode == "max"
    assert task.improved(0.9, None, 0.0)
    assert task.improved(0.91, 0.9, 0.0) and task.improved(0.9, 0.9, 0.0)
    assert not task.improved(0.89, 0.9, 0.0)
    assert not task.improved(0.905, 0.9, 0.01)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0]])
    metrics = task.metrics_fn(logits, torch.tensor([0, 1, 1, 1]))
    assert metrics["val_accuracy"] == pytest.approx(0.75)
    assert metrics["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1, 1])).item())


# --------------------------------------------------------------------------- a tiny real run


TINY = {"lenet.lr_find.num_iter": 20, "lenet.train.epochs": 2, "lenet.train.max_batches": 3}


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = make_params(tmp_path, TINY)
    for stage in (fetch_classifier, prepare_classifier, lr_find_lenet, train_lenet, evaluate_lenet):
        stage.main(params)
    return tmp_path, params


def test_tiny_run_writes_the_output_contract(tiny_run):
    root, params = tiny_run
    meta = load_meta()

    record = json.loads((root / "reports/lr_find/lenet.json").read_text())
    assert len(record["lrs"]) == len(record["losses"]) > 5 and record["rule"] == "valley"
    assert (root / "reports/lr_find/lenet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    state = torch.load(root / "models/lenet.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    LeNet(10).load_state_dict(state, strict=True)

    history = live.read_history(root / "dvclive/train_lenet")
    assert [row["epoch"] for row in history] == [1, 2]
    assert {"train_loss", "val_loss", "val_accuracy", "lr"} <= set(history[0])
    assert (root / "checkpoints/lenet/last.pt").is_file()

    metrics = json.loads((root / "reports/details/lenet.json").read_text())
    assert all(isinstance(v, (int, float)) for v in metrics.values())  # flat numbers
    assert 0 <= metrics["test_accuracy"] <= 1
    assert metrics["test_images"] == meta["sizes"]["test"]
    per_class = pd.read_csv(root / "reports/plots/lenet/class_accuracy.csv", dtype={"class": str})
    assert list(per_class["class"]) == meta["class_names"]  # digits: every class is in the test split
    assert per_class["images"].sum() == metrics["test_images"]
    assert (per_class["accuracy"] * per_class["images"]).sum() / metrics["test_images"] == pytest.approx(
        metrics["test_accuracy"], abs=1e-6)
    # The weights kept are the best epoch's: evaluate's val accuracy is the best of the curve.
    assert metrics["val_accuracy"] == pytest.approx(max(float(row["val_accuracy"]) for row in history), abs=1e-6)

    records = json.loads((root / "reports/plots/lenet/confusion.json").read_text())
    assert len(records) == meta["sizes"]["test"]
    assert set(records[0]) == {"actual", "predicted"}
    test_labels = load_split("test")["labels"].tolist()
    assert [r["actual"] for r in records] == [meta["class_names"][i] for i in test_labels]
    hits = sum(r["actual"] == r["predicted"] for r in records)
    assert hits / len(records) == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert (root / "reports/plots/lenet/confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_with_the_same_params_resumes_from_the_checkpoint(tiny_run, caplog):
    root, params = tiny_run
    weights = (root / "models/lenet.pt").read_bytes()
    history = {p: p.read_bytes() for p in (root / "dvclive/train_lenet").rglob("*.*")}
    with caplog.at_level("INFO"):
        train_lenet.main(params)
    assert "resuming from checkpoints/lenet/last.pt (epoch 2 done)" in caplog.text
    assert (root / "models/lenet.pt").read_bytes() == weights
    assert {p: p.read_bytes() for p in (root / "dvclive/train_lenet").rglob("*.*")} == history


def test_lr_auto_without_the_range_test_names_the_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = make_params(tmp_path, TINY)
    fetch_classifier.main(params)
    prepare_classifier.main(params)
    with pytest.raises(PipelineError, match=r"'lenet.train.lr' is 'auto' but reports/lr_find/lenet.json does not exist"):
        train_lenet.main(params)


def test_evaluate_without_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = make_params(tmp_path, TINY)
    fetch_classifier.main(params)
    prepare_classifier.main(params)
    with pytest.raises(PipelineError, match="models/lenet.pt: weights file not found"):
        evaluate_lenet.main(params)
