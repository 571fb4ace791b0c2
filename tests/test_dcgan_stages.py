"""DCGAN's data slot (digits from the classifier data, a folder of pictures) and
tiny real runs of prepare_gan, train_dcgan and evaluate_dcgan through
main(params): the output contract, the FID ceiling, resume after a kill."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_classifier_data import make_params
from test_dcgan import NZ, same

from dlpipe import runtime, tensor_io
from dlpipe.data import gan_images
from dlpipe.errors import PipelineError
from dlpipe.models.dcgan import Discriminator, Generator
from dlpipe.report import page
from dlpipe.stages import (evaluate_dcgan, fetch_classifier, prepare_classifier, prepare_gan, train_dcgan,
                           train_fid_lenet)
from dlpipe.stages._dcgan import build_networks
from dlpipe.training import live
from dlpipe.training import checkpoint

REPO = Path(__file__).resolve().parents[1]

@contextlib.contextmanager
def cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


# --------------------------------------------------------------------------- the GAN data slot


def write_pictures(folder: Path, sizes: list[tuple[int, int]]) -> None:
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        path = folder / "faces" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_folder_source_reads_resizes_and_crops(tmp_path):
    write_pictures(tmp_path, [(40, 30), (64, 80), (32, 32), (100, 50)])
    (tmp_path / "faces" / "notes.txt").write_text("not a picture")
    images, names = gan_images.read_folder(tmp_path, 32, 3, 0, seed=0)
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
    assert names == ["faces/000.png", "faces/001.png", "faces/002.png", "faces/003.png"]
    # A 32 x 32 picture passes unchanged; grey is PIL's luma.
    original = torch.from_numpy(np.array(Image.open(tmp_path / "faces/002.png"))).permute(2, 0, 1)
    assert torch.equal(images[2], original)
    grey, _ = gan_images.read_folder(tmp_path, 32, 1, 0, seed=0)
    expected = torch.from_numpy(np.array(Image.open(tmp_path / "faces/002.png").convert("L")))
    assert grey.shape == (4, 1, 32, 32) and torch.equal(grey[2, 0], expected)
    sample, names = gan_images.read_folder(tmp_path, 64, 3, 2, seed=0)
    assert sample.shape == (2, 3, 64, 64) and len(set(names)) == 2 and names == sorted(names)


@pytest.mark.parametrize(("setup", "message"), [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "holds no pictures"),
    (lambda root: (root.mkdir(), (root / "a.txt").write_text("x")), "holds no pictures"),
    (lambda root: root.write_text("x"), "is not a folder"),
])
def test_folder_source_errors_name_the_folder(tmp_path, setup, message):
    root = tmp_path / "celeba"
    setup(root)
    with pytest.raises(PipelineError, match=rf"{root}: the folder of GAN images \('dcgan.data.folder'\) {message}"):
        gan_images.list_images(root)
    with pytest.raises(PipelineError, match="'dcgan.data.folder' is empty"):
        gan_images.list_images("")


def test_unreadable_picture_is_named(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(PipelineError, match="broken.jpg: not a readable picture"):
        gan_images.read_folder(tmp_path, 32, 3, 0, seed=0)


def test_channels_and_resize():
    colour = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    grey = colour[:, :1].expand(-1, 3, -1, -1)
    assert torch.equal(gan_images.to_channels(grey, 1), colour[:, :1])  # equal channels stay exact
    assert torch.equal(gan_images.to_channels(colour[:, :1], 3), colour[:, :1].expand(-1, 3, -1, -1))
    assert gan_images.resize(colour, 64).shape == (5, 3, 64, 64)
    assert gan_images.resize(colour, 32) is colour


# --------------------------------------------------------------------------- tiny real runs


TINY = {"dcgan.feature_net.train.epochs": 2, "dcgan.feature_net.train.max_batches": 5,
        "dcgan.model.ngf": 8, "dcgan.model.ndf": 8, "dcgan.model.nz": NZ,
        "dcgan.train.epochs": 2, "dcgan.train.max_batches": 3, "dcgan.train.grid_images": 16,
        "dcgan.evaluate.fid_max_samples": 100, "dcgan.evaluate.class_samples": 200}


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory) -> Path:
    """The classifier data and a (briefly) trained metric LeNet, once for the module."""
    root = tmp_path_factory.mktemp("gan_base")
    with cwd(root):
        params = make_params(root, TINY)
        run_stages(params, fetch_classifier, prepare_classifier, train_fid_lenet)
    return root


def run_stages(params, *stages) -> None:
    """Each stage's ``main`` on its declared torch threads (``threads.<stage>``), as ``python -m
    dlpipe`` runs it, whatever the process was left on; the process's count restored after."""
    before = torch.get_num_threads()
    try:
        for stage in stages:
            name = stage.__name__.rsplit(".", 1)[-1]
            runtime.pin_threads(name, params.threads[name])
            stage.main(params)
    finally:
        torch.set_num_threads(before)


def workspace(classifier_run: Path, dest: Path, overrides: dict | None = None):
    """A fresh folder holding the classifier data and the metric LeNet, with params."""
    for rel in ("data/prepared/classifier", "models/fid_lenet.pt"):
        src = classifier_run / rel
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / rel)
    return make_params(dest, {**TINY, **(overrides or {})})


@pytest.fixture(scope="module")
def gan_run(classifier_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("gan_run")
    params = workspace(classifier_run, root)
    with cwd(root):
        run_stages(params, prepare_gan, train_dcgan, evaluate_dcgan)
    return root, params


def test_tiny_run_writes_the_output_contract(gan_run):
    root, params = gan_run
    meta = json.loads((root / "data/prepared/gan/meta.json").read_text())
    assert (meta["nc"], meta["image_size"], meta["eval_pool"]) == (1, 32, "real_eval")  # nc auto: grey digits
    classifier = json.loads((root / "data/prepared/classifier/meta.json").read_text())["sizes"]
    assert meta["sizes"] == {"train": classifier["train"], "real_eval": classifier["val"] + classifier["test"]}

    g = Generator(NZ, 8, 1, 32)
    g.load_state_dict(torch.load(root / "models/dcgan_generator.pt", weights_only=True))
    Discriminator(8, 1, 32).load_state_dict(torch.load(root / "models/dcgan_discriminator.pt", weights_only=True))

    assert sorted(p.name for p in (root / "reports/dcgan").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    final = Image.open(root / "reports/plots/dcgan/final_grid.png")
    assert final.size == (4 * 34 + 2, 4 * 34 + 2)  # 16 images of 32 px, 4 a row, 2 px gaps
    final_bytes = (root / "reports/plots/dcgan/final_grid.png").read_bytes()
    assert final_bytes == (root / "reports/dcgan/epoch_002.png").read_bytes()
    steps = live.read_history(root / "dvclive/train_dcgan", "step")
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert [r["epoch"] for r in steps] == [1, 1, 1, 2, 2, 2]
    assert {"loss_d", "loss_g", "d_x", "d_g_z1", "d_g_z2", "epoch"} <= set(steps[0])

    train = json.loads((root / "reports/details/dcgan_train.json").read_text())
    assert train["steps"] == 6 and train["nan_steps"] == 0 and "d_collapse_steps" in train
    metrics = json.loads((root / "reports/details/dcgan.json").read_text())  # every number
    assert all(isinstance(v, (int, float)) for v in metrics.values())  # flat numbers
    assert metrics["fid_samples"] == 100 and metrics["fid_real_pool"] == meta["sizes"]["real_eval"]
    assert 0 < metrics["fid_floor"] < metrics["fid_ceiling"] and metrics["fid"] > 0
    assert metrics["fid_over_floor"] == pytest.approx(metrics["fid"] / metrics["fid_floor"])
    assert 0 <= metrics["min_class_share"] <= 0.1 <= metrics["max_class_share"] <= 1
    assert 0.1 <= metrics["mean_confidence"] <= 1
    record = json.loads((root / "reports/fid/dcgan.json").read_text())
    assert record["metrics"] == metrics and "disjoint" in record["floor_sample"]
    assert sum(record["class_shares"].values()) == pytest.approx(1.0)
    assert "class_metrics" not in metrics  # digits: the class metrics are there, no note
    with open(root / "reports/plots/dcgan/class_histogram.csv", newline="") as fh:
        assert [row["class"] for row in csv.DictReader(fh)] == [str(d) for d in range(10)]


def test_fid_of_the_untrained_generator_is_the_ceiling(gan_run, tmp_path, monkeypatch):
    root, params = gan_run
    shutil.copytree(root, tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")
    untrained, _ = build_networks(params, 1, torch.device("cpu"))
    tensor_io.save_weights("models/dcgan_generator.pt", untrained.state_dict())
    evaluate_dcgan.main(params)
    metrics = json.loads(Path("reports/details/dcgan.json").read_text())
    assert metrics["fid"] == metrics["fid_ceiling"]


def test_resume_after_a_kill_gives_the_uninterrupted_result(classifier_run, tmp_path, monkeypatch):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        params = workspace(classifier_run, folder)
        with cwd(folder):
            prepare_gan.main(params)
    with cwd(whole):
        train_dcgan.main(params)

    real_save = checkpoint.save
    calls = []

    def save_then_die(path, obj):
        real_save(path, obj)
        calls.append(path)
        if len(calls) == 1:  # the epoch-1 checkpoint is on disk: the process dies here
            raise KeyboardInterrupt("killed")

    with cwd(killed):
        with monkeypatch.context() as patch:
            patch.setattr(checkpoint, "save", save_then_die)
            with pytest.raises(KeyboardInterrupt):
                train_dcgan.main(params)
        assert torch.load("checkpoints/dcgan/last.pt", weights_only=True)["epoch"] == 1
        assert not Path("models/dcgan_generator.pt").exists()
        shutil.rmtree("reports/dcgan")  # what DVC and Snakemake do to a stage's outputs before rerunning it
        train_dcgan.main(params)

    for rel in ("models/dcgan_generator.pt", "models/dcgan_discriminator.pt"):
        a, b = (torch.load(root / rel, weights_only=True) for root in (whole, killed))
        assert same(a, b), rel
    for rel in ("dvclive/train_dcgan/metrics.json", "dvclive/train_dcgan/plots/metrics/loss_d.tsv",
                "dvclive/train_dcgan/plots/metrics/epoch.tsv", "reports/details/dcgan_train.json",
                "reports/dcgan/epoch_001.png", "reports/dcgan/epoch_002.png", "reports/plots/dcgan/final_grid.png"):
        assert (whole / rel).read_bytes() == (killed / rel).read_bytes(), rel
    assert sorted(p.name for p in (killed / "reports/dcgan").iterdir()) == ["epoch_001.png", "epoch_002.png"]


def test_gan_data_must_match_the_classifier_data(classifier_run, tmp_path, monkeypatch):
    params = workspace(classifier_run, tmp_path, {"dcgan.data.name": "cifar10"})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match="'dcgan.data.name' is 'cifar10' but data/prepared/classifier holds digits"):
        prepare_gan.main(params)


def test_folder_source_through_the_stages(classifier_run, tmp_path, monkeypatch):
    write_pictures(tmp_path / "pictures", [(48, 40)] * 12)
    params = workspace(classifier_run, tmp_path, {"dcgan.data.name": "folder", "dcgan.data.folder": "pictures",
                                                  "dcgan.image_size": 64, "dcgan.train.epochs": 1})
    monkeypatch.chdir(tmp_path)
    prepare_gan.main(params)
    meta = json.loads(Path("data/prepared/gan/meta.json").read_text())
    assert (meta["nc"], meta["image_size"], meta["eval_pool"], meta["sizes"]["train"]) == (3, 64, "train", 12)
    assert not Path("data/prepared/gan/real_eval.pt").exists()
    train_dcgan.main(params)
    evaluate_dcgan.main(params)
    metrics = json.loads(Path("reports/details/dcgan.json").read_text())
    assert metrics["fid_samples"] == 6 and metrics["fid_real_pool"] == 12
    assert 0 < metrics["fid_floor"] and metrics["fid"] > 0 and metrics["fid_ceiling"] > 0  # the FID stays

    # The pictures are not digits: no class metrics, a note in their place that keeps the FID.
    assert not {"class_samples", "min_class_share", "max_class_share", "mean_confidence"} & set(metrics)
    note = metrics.pop("class_metrics")
    assert note.startswith("omitted: the pictures are not the classifier's classes (the FID's LeNet was trained "
                           "on digits)") and "the FID is kept" in note and "feature space" in note
    assert all(isinstance(v, (int, float)) for v in metrics.values())  # the rest: flat numbers
    record = json.loads(Path("reports/fid/dcgan.json").read_text())
    assert "class_shares" not in record and record["class_sample"] == note
    assert record["metrics"]["class_metrics"] == note
    # The declared plot file exists (DVC needs every out) and holds the header alone.
    assert Path("reports/plots/dcgan/class_histogram.csv").read_text() == "class,share\n"

    # The report says so in words instead of drawing the classes.
    shutil.copy(REPO / "dvc.yaml", "dvc.yaml")
    context = page.context(params.raw, Path("."))
    section = next(s for s in context["sections"] if s.name == "dcgan")
    notes = [b["text"] for b in section.blocks if b["kind"] == "note"]
    assert notes == ["No class metrics (classes of generated samples, smallest class share, mean classifier "
                     f"confidence): {note.removeprefix('omitted: ')}."]
    assert not any(b.get("title") == "Classes of generated samples" for b in section.blocks)
    shown = {(row["file"], row["key"]) for row in context["summary"]}
    assert ("reports/metrics/dcgan.json", "fid") in shown
    assert not {key for _, key in shown} & {"min_class_share", "mean_confidence"}
    html = page.render(context)
    assert "No class metrics (classes of generated samples" in html and "FID with its floor and ceiling" in html


def test_missing_folder_fails_before_any_output(classifier_run, tmp_path, monkeypatch):
    params = workspace(classifier_run, tmp_path, {"dcgan.data.name": "folder", "dcgan.data.folder": "nowhere"})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match="nowhere: the folder of GAN images .* does not exist"):
        prepare_gan.main(params)
    assert not Path("data/prepared/gan").exists()
