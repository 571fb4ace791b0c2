"""The classifier data slot: digits (embedded) and CIFAR-10 fetched from a local
HTTP server on 127.0.0.1 serving a tiny archive in the real CIFAR-10 python
format, its conversion to the CIFAR layout, the stratified split and the
training-only statistics; every fetch failure is one PipelineError and leaves
the previous data/raw/classifier as it was."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import socket
import struct
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import LocalServer, limits, set_key
from dlpipe.config import ClassifierData, Params, load_params
from dlpipe.data import classifier_convert as cc
from dlpipe.data.classifier_fetch import RAW_DIR, fetch
from dlpipe.data.classifier_prepared import PREPARED_DIR, load_meta, load_split
from dlpipe.errors import PipelineError
from dlpipe.stages import fetch_classifier, prepare_classifier

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 20  # images per tiny CIFAR batch: 2 per class
ARCHIVE = "cifar-10-python.tar.gz"


def make_params(folder: Path, overrides: dict):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in {"device": "cpu", **overrides}.items():
        set_key(raw, key, value)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(path)


def run_stages(folder: Path, overrides: dict, stages) -> Params:
    """Each stage's main, in order, in ``folder`` on make_params(folder, overrides); those params."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        params = make_params(folder, overrides)
        for stage in stages:
            stage.main(params)
    return params


# --------------------------------------------------------------------------- tiny CIFAR-10


class Py2Pickler(pickle._Pickler):
    """Writes what the official files hold, Python 2 cPickle at protocol 2: every
    str as a byte string (BINSTRING) and numpy under its old module numpy.core."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_byte_string(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_byte_string
    dispatch[type] = save_global


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def cifar_batch(seed: int, n: int = PER_BATCH) -> dict:
    """A batch as the real files hold it: bytes keys, b'data' uint8 N x 3072, b'labels' a list."""
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": f"batch {seed}".encode(),
        b"labels": [i % 10 for i in range(n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def build_archive(path: Path, extra: dict[str, bytes] | None = None, symlink: str | None = None) -> dict:
    """cifar-10-batches-py/data_batch_1..5, test_batch and batches.meta, pickled
    as the official Python 2 files are, into a .tar.gz. Returns the batches."""
    batches = {f"data_batch_{i}": cifar_batch(i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(99)
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072}
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            add_member(tar, f"cifar-10-batches-py/{name}", py2_pickle(batch))
        add_member(tar, "cifar-10-batches-py/batches.meta", py2_pickle(meta))
        add_member(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
        for name, data in (extra or {}).items():
            add_member(tar, name, data)
        if symlink:
            info = tarfile.TarInfo("cifar-10-batches-py/link")
            info.type, info.linkname = tarfile.SYMTYPE, symlink
            tar.addfile(info)
    return batches


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cifar_server(tmp_path_factory):
    """Serves the good tiny archive and broken variants on 127.0.0.1."""
    root = tmp_path_factory.mktemp("cifar_site")
    batches = build_archive(root / ARCHIVE)
    data = (root / ARCHIVE).read_bytes()
    (root / "truncated.tar.gz").write_bytes(data[: len(data) // 2])
    build_archive(root / "dotdot.tar.gz", extra={"cifar-10-batches-py/../../escaped.txt": b"owned"})
    build_archive(root / "absolute.tar.gz", extra={"/tmp/dlpipe-absolute-member.txt": b"owned"})
    build_archive(root / "symlink.tar.gz", symlink="/etc/passwd")
    with tarfile.open(root / "not_cifar.tar.gz", "w:gz") as tar:
        add_member(tar, "something/else.txt", b"hello")
    server = LocalServer(root)
    server.root_dir, server.batches = root, batches
    yield server
    server.close()


def cfg_for(server: LocalServer, name: str, checksum: str | None = None) -> ClassifierData:
    return ClassifierData(name="cifar10", cifar10_url=f"{server.url}/{name}",
                          cifar10_md5=checksum or md5(server.root_dir / name))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def previous_output(in_tmp):
    """A finished digits fetch in data/raw/classifier: a failed fetch must leave it be."""
    fetch(ClassifierData("digits", "https://example.invalid/x.tar.gz", "0" * 32), RAW_DIR, limits())
    return snapshot(RAW_DIR)


def assert_untouched(before: dict[str, bytes]) -> None:
    assert snapshot(RAW_DIR) == before
    leftovers = [p.name for p in RAW_DIR.parent.iterdir() if p.name != RAW_DIR.name]
    assert leftovers == [], leftovers  # no temp folder, no half download


# --------------------------------------------------------------------------- CIFAR-10 fetch


def test_cifar10_fetch_and_prepare_from_the_local_server(cifar_server, in_tmp):
    params = make_params(in_tmp, {"lenet.data.name": "cifar10",
                                  "lenet.data.cifar10_url": f"{cifar_server.url}/{ARCHIVE}",
                                  "lenet.data.cifar10_md5": md5(cifar_server.root_dir / ARCHIVE),
                                  "lenet.prepare.val_fraction": 0.2})
    seen = len(cifar_server.requests)
    fetch_classifier.main(params)
    assert cifar_server.requests[seen:] == [f"/{ARCHIVE}"]
    names = {p.name for p in (RAW_DIR / "cifar-10-batches-py").iterdir()}
    assert {"data_batch_1", "data_batch_5", "test_batch", "batches.meta"} <= names
    assert json.loads((RAW_DIR / "source.json").read_text())["name"] == "cifar10"

    prepare_classifier.main(params)
    meta = load_meta()
    assert meta["dataset"] == "cifar10" and meta["class_names"] == CLASSES
    train, val, test = (load_split(s) for s in ("train", "val", "test"))
    # The 5 x 20 training images split 80/20 per class; the official test batch kept whole.
    assert (len(train["labels"]), len(val["labels"]), len(test["labels"])) == (80, 20, PER_BATCH)
    assert meta["class_counts"]["val"] == [2] * 10 and meta["class_counts"]["train"] == [8] * 10
    # Pixels land where CIFAR's row layout puts them: 1024 red, 1024 green, 1024 blue, row-major.
    raw_test = cifar_server.batches["test_batch"]
    expected = torch.from_numpy(raw_test[b"data"]).view(-1, 3, 32, 32)
    assert torch.equal(test["images"], expected)
    assert torch.equal(test["labels"], torch.tensor(raw_test[b"labels"]))
    assert test["images"][0, 1, 0, 0] == raw_test[b"data"][0, 1024]  # green plane starts at 1024
    # Every training image is one of the 100 served, with its own label.
    served = {bytes(row): label for b in range(1, 6) for row, label in
              zip(cifar_server.batches[f"data_batch_{b}"][b"data"], cifar_server.batches[f"data_batch_{b}"][b"labels"])}
    for images, labels in ((train["images"], train["labels"]), (val["images"], val["labels"])):
        for image, label in zip(images, labels):
            assert served[image.reshape(-1).numpy().tobytes()] == int(label)


def test_wrong_md5_is_refused_and_the_previous_output_kept(cifar_server, previous_output):
    cfg = cfg_for(cifar_server, ARCHIVE, checksum="0" * 32)
    with pytest.raises(PipelineError, match=r"md5 is [0-9a-f]{32}, expected 0{32} \(params 'lenet.data.cifar10_md5'\)"):
        fetch(cfg, RAW_DIR, limits())
    assert_untouched(previous_output)


def test_truncated_archive_is_refused_and_the_previous_output_kept(cifar_server, previous_output):
    # Against the real archive's md5, a truncated download is an md5 mismatch...
    with pytest.raises(PipelineError, match="corrupt or truncated"):
        fetch(cfg_for(cifar_server, "truncated.tar.gz", checksum=md5(cifar_server.root_dir / ARCHIVE)), RAW_DIR, limits())
    assert_untouched(previous_output)
    # ...and even where the md5 matches (a wrong md5 in params), tar finds it incomplete.
    with pytest.raises(PipelineError, match="truncated.tar.gz .*not a complete tar.gz archive"):
        fetch(cfg_for(cifar_server, "truncated.tar.gz"), RAW_DIR, limits())
    assert_untouched(previous_output)


def test_unreachable_url_is_refused_and_the_previous_output_kept(previous_output):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = ClassifierData("cifar10", f"http://127.0.0.1:{port}/{ARCHIVE}", "0" * 32)
    with pytest.raises(PipelineError, match=rf"could not download http://127.0.0.1:{port}/.*cifar10_url"):
        fetch(cfg, RAW_DIR, limits())
    assert_untouched(previous_output)


def test_missing_file_on_the_server_names_the_http_status(cifar_server, previous_output):
    with pytest.raises(PipelineError, match="HTTP 404"):
        fetch(cfg_for(cifar_server, "no-such-file.tar.gz", checksum="0" * 32), RAW_DIR, limits())
    assert_untouched(previous_output)


@pytest.mark.parametrize(("archive", "message"), [
    ("dotdot.tar.gz", r"member 'cifar-10-batches-py/\.\./\.\./escaped\.txt' has a '\.\.' component"),
    ("absolute.tar.gz", r"member '/tmp/dlpipe-absolute-member\.txt' has an absolute path"),
    ("symlink.tar.gz", r"member 'cifar-10-batches-py/link' has a link"),
    ("not_cifar.tar.gz", r"not the CIFAR-10 python archive: no cifar-10-batches-py/data_batch_1"),
])
def test_unsafe_or_foreign_archive_is_refused_before_extracting(cifar_server, previous_output, archive, message):
    with pytest.raises(PipelineError, match=message):
        fetch(cfg_for(cifar_server, archive), RAW_DIR, limits())
    assert_untouched(previous_output)  # also: nothing landed beside data/raw/classifier
    assert not Path("/tmp/dlpipe-absolute-member.txt").exists()


def test_py2_pickles_name_only_numpy_globals():
    import pickletools

    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(py2_pickle(cifar_batch(1)))]
    assert {arg for name, arg in ops if name == "GLOBAL"} == {
        "numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert not {name for name, _ in ops} & {"BINUNICODE", "SHORT_BINBYTES", "BINBYTES"}


def test_cifar_batch_that_is_not_arrays_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(PipelineError, match=r"data_batch_1: not a readable CIFAR-10 python batch.*refusing to load (__builtin__|builtins)\.print"):
        cc.read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(PipelineError, match="uint8 N x 3072"):
        cc.read_cifar_batch(path)


# --------------------------------------------------------------------------- digits and the split


def test_digits_in_cifar_layout():
    images = torch.zeros(2, 8, 8, dtype=torch.uint8)
    images[0] = 16
    images[1, 2:6, 3:5] = 8
    out = cc.digits_to_cifar_layout(images)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 32, 32)
    assert torch.all(out[0] == 255)  # 16 -> 255
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])  # grey in 3 channels
    assert out[1].max() == 128 and out[1, 0, 0, 0] == 0  # 8 -> 127.5 -> 128, background stays 0
    with pytest.raises(PipelineError, match="values 0..16"):
        cc.digits_to_cifar_layout(torch.full((1, 8, 8), 17, dtype=torch.uint8))


def test_stratified_split_is_deterministic_disjoint_and_stratified():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    a = cc.stratified_split(labels, {"test": 0.2, "val": 0.1}, seed=7)
    b = cc.stratified_split(labels, {"test": 0.2, "val": 0.1}, seed=7)
    c = cc.stratified_split(labels, {"test": 0.2, "val": 0.1}, seed=8)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["test"], c["test"])
    joined = np.concatenate([a["train"], a["val"], a["test"]])
    assert sorted(joined) == list(range(len(labels)))  # disjoint and complete
    assert np.bincount(labels[a["test"]]).tolist() == [20, 10, 6, 4]
    assert np.bincount(labels[a["val"]]).tolist() == [10, 5, 3, 2]
    with pytest.raises(PipelineError, match="leave none for training"):
        cc.stratified_split(np.array([0, 0, 1, 1]), {"test": 0.5, "val": 0.5}, seed=0)


def test_channel_stats_match_torch():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    mean, std = cc.channel_stats(images, chunk=7)
    x = images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)


def test_digits_fetch_and_prepare(in_tmp):
    params = make_params(in_tmp, {})
    fetch_classifier.main(params)
    prepare_classifier.main(params)
    first = snapshot(PREPARED_DIR)
    meta = load_meta()
    assert meta["dataset"] == "digits" and meta["class_names"] == [str(i) for i in range(10)]
    splits = {s: torch.load(PREPARED_DIR / f"{s}.pt", weights_only=True) for s in ("train", "val", "test")}
    sizes = {s: len(t["labels"]) for s, t in splits.items()}
    assert sum(sizes.values()) == 1797
    cfg = params.lenet.prepare
    assert sizes["test"] == pytest.approx(1797 * cfg.test_fraction, abs=10)
    assert sizes["val"] == pytest.approx(1797 * cfg.val_fraction, abs=10)
    for tensors in splits.values():
        assert tensors["images"].dtype == torch.uint8 and tensors["images"].shape[1:] == (3, 32, 32)
        assert tensors["labels"].dtype == torch.int64
    # Stratified: each class gives each split its share of the class's own count.
    counts = {s: np.bincount(t["labels"].numpy(), minlength=10) for s, t in splits.items()}
    totals = sum(counts.values())
    assert totals.tolist() == np.bincount(np.asarray(__import__("sklearn.datasets").datasets.load_digits().target)).tolist()
    assert counts["test"].tolist() == [round(cfg.test_fraction * n) for n in totals]
    assert counts["val"].tolist() == [round(cfg.val_fraction * n) for n in totals]
    assert all(counts[s].tolist() == meta["class_counts"][s] for s in splits)
    # Statistics of the training split, not of all images.
    mean, std = cc.channel_stats(splits["train"]["images"])
    assert meta["mean"] == mean and meta["std"] == std
    all_mean, _ = cc.channel_stats(torch.cat([t["images"] for t in splits.values()]))
    assert all_mean != mean
    # Deterministic: a second run writes the very same bytes.
    prepare_classifier.main(params)
    assert snapshot(PREPARED_DIR) == first


def test_prepare_without_fetch_names_the_missing_file(in_tmp):
    with pytest.raises(PipelineError, match=r"data/raw/classifier/source.json: not found; run fetch_classifier first"):
        prepare_classifier.main(make_params(in_tmp, {}))


def test_tiny_cifar10_trains_and_evaluates(cifar_server, in_tmp, caplog):
    from dlpipe.stages import evaluate_lenet, lr_find_lenet, train_lenet

    params = make_params(in_tmp, {"lenet.data.name": "cifar10",
                                  "lenet.data.cifar10_url": f"{cifar_server.url}/{ARCHIVE}",
                                  "lenet.data.cifar10_md5": md5(cifar_server.root_dir / ARCHIVE),
                                  "lenet.lr_find.num_iter": 10, "lenet.train.epochs": 2,
                                  "lenet.train.batch_size": 16})
    with caplog.at_level("INFO"):
        for stage in (fetch_classifier, prepare_classifier, lr_find_lenet, train_lenet, evaluate_lenet):
            stage.main(params)
    metrics = json.loads(Path("reports/details/lenet.json").read_text())
    assert metrics["test_images"] == PER_BATCH
    assert set(pd.read_csv("reports/plots/lenet/class_accuracy.csv")["class"]) == set(CLASSES)
    records = json.loads(Path("reports/plots/lenet/confusion.json").read_text())
    assert {r["actual"] for r in records} == set(CLASSES)
    assert "lenet on cifar10" in caplog.text
