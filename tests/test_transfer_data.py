"""The transfer data slot: the LFW faces written as an ImageFolder of PNGs, the
hymenoptera zip fetched from a local HTTP server on 127.0.0.1 serving a tiny
zip in the real layout (built here), safe extraction, the user's own folder
(train/ and val/ as given, or class folders split here) and its checks,
decoding into uint8 tensors, and the transfer-learning tutorial's transforms
on whole batches."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from conftest import LocalServer, limits
from dlpipe.config import TransferData
from dlpipe.data import transfer_augment as ta
from dlpipe.data.transfer_fetch import RAW_DIR, fetch
from dlpipe.data.transfer_images import PREPARED_DIR, load_meta, load_split
from dlpipe.errors import PipelineError
from dlpipe.stages import fetch_transfer, prepare_transfer
from test_classifier_data import make_params, snapshot

ZIP = "hymenoptera_data.zip"
TINY_SIZES = {"ants": [(40, 30), (26, 50), (33, 33)], "bees": [(50, 20), (30, 41), (28, 28)]}  # (w, h)


def faces_cfg(**overrides) -> TransferData:
    values = {"name": "faces", "train_per_class": 10, "split_seed": 42,
              "hymenoptera_url": "https://example.invalid/hymenoptera_data.zip", "hymenoptera_md5": "",
              "folder": "", "folder_val_fraction": 0.2}
    return TransferData(**{**values, **overrides})


def jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def build_zip(path: Path, extra: dict[str, bytes] | None = None, symlink: str | None = None, top: str = "hymenoptera_data") -> None:
    """The real zip's layout: hymenoptera_data/{train,val}/{ants,bees}/*.jpg, here a few small JPEGs."""
    with zipfile.ZipFile(path, "w") as zf:
        for split_index, split in enumerate(("train", "val")):
            for cls, sizes in TINY_SIZES.items():
                for i, (w, h) in enumerate(sizes):
                    zf.writestr(f"{top}/{split}/{cls}/{cls}_{i}.jpg", jpeg(w + split_index, h, seed=i))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(f"{top}/train/ants/link.jpg")
            info.external_attr = (0o120777 << 16)  # a symlink, as Info-ZIP records it
            zf.writestr(info, symlink)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def zip_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hymenoptera_site")
    build_zip(root / ZIP)
    build_zip(root / "slip.zip", extra={"hymenoptera_data/../../escaped.txt": b"owned"})
    build_zip(root / "absolute.zip", extra={"/tmp/dlpipe-absolute-zip-member.txt": b"owned"})
    build_zip(root / "link.zip", symlink="/etc/passwd")
    with zipfile.ZipFile(root / "flat.zip", "w") as zf:
        zf.writestr("pictures/a.jpg", jpeg(10, 10, 0))
    data = (root / ZIP).read_bytes()
    (root / "truncated.zip").write_bytes(data[: len(data) // 2])
    server = LocalServer(root)
    server.root_dir = root
    yield server
    server.close()


def hym_cfg(server: LocalServer, name: str = ZIP, checksum: str | None = None) -> TransferData:
    return faces_cfg(name="hymenoptera", hymenoptera_url=f"{server.url}/{name}",
                     hymenoptera_md5=md5(server.root_dir / name) if checksum is None else checksum)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def previous_output(in_tmp):
    """A finished faces fetch: a failed fetch must leave it as it was."""
    fetch(faces_cfg(), RAW_DIR, limits())
    return snapshot(RAW_DIR)


def assert_untouched(before: dict[str, bytes]) -> None:
    assert snapshot(RAW_DIR) == before
    leftovers = [p.name for p in RAW_DIR.parent.iterdir() if p.name != RAW_DIR.name]
    assert leftovers == [], leftovers


# --------------------------------------------------------------------------- faces


def test_faces_are_an_image_folder_of_pngs_split_stratified_and_deterministic(in_tmp):
    from skimage.data import lfw_subset

    fetch(faces_cfg(), RAW_DIR, limits())
    first = snapshot(RAW_DIR)
    files = {split: {cls: sorted(p.name for p in (RAW_DIR / split / cls).iterdir()) for cls in ("face", "non_face")}
             for split in ("train", "val")}
    # The few-shot split: 10 of each class to train/, every other image to val/, none in both.
    assert {split: {cls: len(names) for cls, names in v.items()} for split, v in files.items()} == {
        "train": {"face": 10, "non_face": 10}, "val": {"face": 90, "non_face": 90}}
    for cls in ("face", "non_face"):
        assert not set(files["train"][cls]) & set(files["val"][cls])
    # lfw_subset(): the first 100 images are faces, the other 100 are not.
    faces = {int(name[4:7]) for split in files for name in files[split]["face"]}
    assert faces == set(range(100))
    assert {int(name[4:7]) for split in files for name in files[split]["non_face"]} == set(range(100, 200))
    lfw = lfw_subset()
    for name in ("lfw_000.png", "lfw_150.png"):
        path = next(RAW_DIR.rglob(name))
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (25, 25)
            pixels = np.asarray(image)
        assert np.array_equal(pixels, np.round(lfw[int(name[4:7])] * 255).astype(np.uint8))
    assert json.loads((RAW_DIR / "source.json").read_text())["name"] == "faces"
    fetch(faces_cfg(), RAW_DIR, limits())
    assert snapshot(RAW_DIR) == first  # same bytes again
    fetch(faces_cfg(split_seed=7), RAW_DIR, limits())
    assert snapshot(RAW_DIR) != first
    fetch(faces_cfg(train_per_class=3), RAW_DIR, limits())
    assert [len(list((RAW_DIR / "train" / cls).iterdir())) for cls in ("face", "non_face")] == [3, 3]
    assert [len(list((RAW_DIR / "val" / cls).iterdir())) for cls in ("face", "non_face")] == [97, 97]


def test_prepare_decodes_the_folder_into_tensors(in_tmp):
    params = make_params(in_tmp, {})
    fetch_transfer.main(params)
    prepare_transfer.main(params)
    meta = load_meta()
    assert meta["dataset"] == "faces" and meta["class_names"] == ["face", "non_face"]
    assert meta["sizes"] == {"train": 20, "val": 180} and meta["class_counts"]["val"] == [90, 90]
    val = load_split("val")
    assert val["images"].dtype == torch.uint8 and val["images"].shape == (180, 3, 25, 25)
    assert torch.equal(val["sizes"], torch.tensor([[25, 25]] * 180))
    # Grey PNGs become RGB as torchvision's ImageFolder loader makes them: three equal channels.
    assert torch.equal(val["images"][:, 0], val["images"][:, 2])
    first = meta["files"]["val"][0]
    with Image.open(RAW_DIR / "val" / first) as image:
        assert torch.equal(val["images"][0, 0], torch.from_numpy(np.array(image)))
    assert val["labels"].tolist() == [0] * 90 + [1] * 90


def test_corrupt_image_names_the_file(in_tmp):
    params = make_params(in_tmp, {})
    fetch_transfer.main(params)
    victim = sorted((RAW_DIR / "train" / "non_face").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:40])  # a truncated PNG
    with pytest.raises(PipelineError, match=rf"{victim.as_posix()}: not a readable image"):
        prepare_transfer.main(params)
    assert not PREPARED_DIR.exists()


def test_prepare_without_fetch_names_the_stage(in_tmp):
    with pytest.raises(PipelineError, match="data/raw/transfer/source.json: not found; run fetch_transfer first"):
        prepare_transfer.main(make_params(in_tmp, {}))


# --------------------------------------------------------------------------- hymenoptera


def test_hymenoptera_fetch_and_prepare_from_the_local_server(zip_server, in_tmp):
    params = make_params(in_tmp, {"transfer.data.name": "hymenoptera",
                                  "transfer.data.hymenoptera_url": f"{zip_server.url}/{ZIP}",
                                  "transfer.data.hymenoptera_md5": md5(zip_server.root_dir / ZIP),
                                  "transfer.prepare.max_side": 45})
    seen = len(zip_server.requests)
    fetch_transfer.main(params)
    assert zip_server.requests[seen:] == [f"/{ZIP}"]
    assert sorted(p.relative_to(RAW_DIR).as_posix() for p in RAW_DIR.rglob("*.jpg"))[:2] == [
        "train/ants/ants_0.jpg", "train/ants/ants_1.jpg"]
    source = json.loads((RAW_DIR / "source.json").read_text())
    assert source == {"name": "hymenoptera", "url": f"{zip_server.url}/{ZIP}", "md5": md5(zip_server.root_dir / ZIP)}

    prepare_transfer.main(params)
    meta = load_meta()
    assert meta["dataset"] == "hymenoptera" and meta["class_names"] == ["ants", "bees"]
    train = load_split("train")
    # Each image keeps its own size (the 50-wide one shrunk to max_side 45), top-left on the canvas.
    expected = [(30, 40), (50, 26), (33, 33), (20, 50), (41, 30), (28, 28)]
    shrunk = [(round(h * 45 / max(h, w)), round(w * 45 / max(h, w))) if max(h, w) > 45 else (h, w) for h, w in expected]
    assert train["sizes"].tolist() == [list(s) for s in shrunk]
    assert train["images"].shape == (6, 3, max(h for h, _ in shrunk), max(w for _, w in shrunk))
    h, w = shrunk[0]
    assert train["images"][0, :, h:].sum() == 0 and train["images"][0, :, :, w:].sum() == 0
    assert train["labels"].tolist() == [0, 0, 0, 1, 1, 1]


def test_wrong_md5_is_refused_and_the_previous_output_kept(zip_server, previous_output):
    with pytest.raises(PipelineError, match=r"md5 is [0-9a-f]{32}, expected f{32} \(params 'transfer.data.hymenoptera_md5'\)"):
        fetch(hym_cfg(zip_server, checksum="f" * 32), RAW_DIR, limits())
    assert_untouched(previous_output)


def test_empty_md5_fetches_and_logs_the_md5_to_pin(zip_server, in_tmp, caplog):
    with caplog.at_level(logging.WARNING):
        fetch(hym_cfg(zip_server, checksum=""), RAW_DIR, limits())
    actual = md5(zip_server.root_dir / ZIP)
    assert f"its md5 is {actual}" in caplog.text
    assert json.loads((RAW_DIR / "source.json").read_text())["md5"] == actual


@pytest.mark.parametrize(("archive", "message"), [
    ("slip.zip", r"member 'hymenoptera_data/\.\./\.\./escaped\.txt' has a '\.\.' component"),
    ("absolute.zip", r"member '/tmp/dlpipe-absolute-zip-member\.txt' has an absolute path"),
    ("link.zip", r"member 'hymenoptera_data/train/ants/link\.jpg' has a link"),
    ("flat.zip", r"not an ImageFolder archive: no train/ and val/ folders"),
    ("truncated.zip", r"not a complete zip archive"),
])
def test_unsafe_or_foreign_archive_is_refused(zip_server, previous_output, archive, message):
    with pytest.raises(PipelineError, match=message):
        fetch(hym_cfg(zip_server, archive), RAW_DIR, limits())
    assert_untouched(previous_output)  # also: nothing landed beside data/raw/transfer
    assert not Path("/tmp/dlpipe-absolute-zip-member.txt").exists()
    assert not (RAW_DIR.parent.parent / "escaped.txt").exists()


# --------------------------------------------------------------------------- the user's own folder


def png(path: Path, seed: int, size: tuple[int, int] = (20, 16)) -> None:
    """A small colour PNG (w x h) with seeded pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")


def image_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """<class>/<class>_NN.png pictures under ``root``, ``counts[class]`` of each."""
    for index, (cls, count) in enumerate(counts.items()):
        for i in range(count):
            png(root / cls / f"{cls}_{i:02d}.png", seed + 100 * index + i)
    return root


def split_image_folder(root: Path, train: dict[str, int], val: dict[str, int]) -> Path:
    image_folder(root / "train", train)
    image_folder(root / "val", val, seed=50)
    return root


def folder_cfg(folder, **overrides) -> TransferData:
    return faces_cfg(name="folder", folder=str(folder), **overrides)


def test_folder_with_train_and_val_is_copied_as_it_is(in_tmp):
    root = split_image_folder(in_tmp / "mine", {"cats": 3, "dogs": 2}, {"cats": 1, "dogs": 2})
    png(root / "train" / "dogs" / "more" / "deep.png", 7)  # ImageFolder reads class folders recursively
    (root / "train" / "cats" / "notes.txt").write_text("not a picture")
    (root / "train" / ".hidden").mkdir()  # hidden folders are no classes (as prepare_transfer reads them)
    fetch(folder_cfg("mine"), RAW_DIR, limits())
    copied = sorted(p.relative_to(RAW_DIR).as_posix() for p in RAW_DIR.rglob("*") if p.is_file())
    assert copied == ["source.json", "train/cats/cats_00.png", "train/cats/cats_01.png", "train/cats/cats_02.png",
                      "train/dogs/dogs_00.png", "train/dogs/dogs_01.png", "train/dogs/more/deep.png",
                      "val/cats/cats_00.png", "val/dogs/dogs_00.png", "val/dogs/dogs_01.png"]
    for rel in copied[1:]:
        assert (RAW_DIR / rel).read_bytes() == (root / rel).read_bytes(), rel
    source = json.loads((RAW_DIR / "source.json").read_text())
    assert source == {"name": "folder", "folder": "mine", "class_names": ["cats", "dogs"],
                      "layout": "train/ and val/ as given", "sizes": {"train": 6, "val": 3},
                      "class_counts": {"train": [3, 3], "val": [1, 2]}}


def test_one_folder_of_classes_is_split_stratified_and_deterministically(in_tmp):
    image_folder(in_tmp / "mine", {"a": 10, "b": 5, "c": 4})
    cfg = folder_cfg(in_tmp / "mine", folder_val_fraction=0.2)
    fetch(cfg, RAW_DIR, limits())
    first = snapshot(RAW_DIR)
    val = {cls: sorted(p.name for p in (RAW_DIR / "val" / cls).iterdir()) for cls in ("a", "b", "c")}
    train = {cls: sorted(p.name for p in (RAW_DIR / "train" / cls).iterdir()) for cls in ("a", "b", "c")}
    assert {cls: len(v) for cls, v in val.items()} == {"a": 2, "b": 1, "c": 1}  # round(0.2 x count) per class
    assert {cls: len(v) for cls, v in train.items()} == {"a": 8, "b": 4, "c": 3}
    for cls in val:
        assert not set(val[cls]) & set(train[cls])
        assert sorted(val[cls] + train[cls]) == sorted(p.name for p in (in_tmp / "mine" / cls).iterdir())
    source = json.loads((RAW_DIR / "source.json").read_text())
    assert source["folder"] == str(in_tmp / "mine") and source["class_names"] == ["a", "b", "c"]
    assert (source["layout"], source["val_fraction"], source["split_seed"]) == ("class folders, split here", 0.2, 42)
    assert source["class_counts"] == {"train": [8, 4, 3], "val": [2, 1, 1]}
    fetch(cfg, RAW_DIR, limits())
    assert snapshot(RAW_DIR) == first  # same bytes again
    fetch(folder_cfg(in_tmp / "mine", folder_val_fraction=0.2, split_seed=7), RAW_DIR, limits())
    assert snapshot(RAW_DIR) != first


def test_folder_through_prepare(in_tmp):
    image_folder(in_tmp / "mine", {"blue": 4, "green": 4, "red": 4})
    params = make_params(in_tmp, {"transfer.data.name": "folder", "transfer.data.folder": "mine",
                                  "transfer.data.folder_val_fraction": 0.25})
    fetch_transfer.main(params)
    prepare_transfer.main(params)
    meta = load_meta()
    assert meta["dataset"] == "folder" and meta["class_names"] == ["blue", "green", "red"]
    assert meta["sizes"] == {"train": 9, "val": 3} and meta["class_counts"]["val"] == [1, 1, 1]
    val = load_split("val")
    assert val["images"].shape == (3, 3, 16, 20) and val["labels"].tolist() == [0, 1, 2]
    with Image.open(RAW_DIR / "val" / meta["files"]["val"][0]) as image:
        assert torch.equal(val["images"][0], torch.from_numpy(np.array(image)).permute(2, 0, 1))


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])  # a truncated PNG


FOLDER_ERRORS = [  # (id, builds the folder under root -> the cfg's folder, the error)
    ("empty-key", lambda root: "", r"'transfer.data.folder' is empty but 'transfer.data.name' is 'folder'"),
    ("missing", lambda root: root / "nowhere",
     r"{root}/nowhere: the transfer images folder \('transfer.data.folder'\) does not exist"),
    ("not-a-folder", lambda root: (png(root / "one.png", 0), root / "one.png")[1],
     r"{root}/one.png: the transfer images folder \('transfer.data.folder'\) is not a folder"),
    ("no-pictures", lambda root: (root / "mine").mkdir() or root / "mine",
     r"{root}/mine: no class folders \('transfer.data.folder'\); expected one sub-folder per class"),
    ("pictures-but-no-classes", lambda root: (png(root / "mine" / "a.png", 0), root / "mine")[1],
     r"{root}/mine: 1 pictures directly in it but no class folders"),
    ("classes-without-pictures", lambda root: ((root / "mine" / "a").mkdir(parents=True),
                                               (root / "mine" / "b").mkdir(), root / "mine")[2],
     r"{root}/mine: no pictures in any of its class folders \(a, b\)"),
    ("one-class", lambda root: image_folder(root / "mine", {"only": 4}),
     r"{root}/mine: only one class folder \(only/\) \('transfer.data.folder'\); expected at least two"),
    ("empty-class", lambda root: (image_folder(root / "mine", {"a": 4, "b": 4}),
                                  (root / "mine" / "c").mkdir(), root / "mine")[2],
     r"{root}/mine/c: class folder holds no pictures .* expected at least one picture in every class folder"),
    ("class-too-small-to-split", lambda root: image_folder(root / "mine", {"a": 10, "b": 2}),
     r"{root}/mine/b: 2 picture\(s\) give 0 to val/ and 2 to train/ "
     r"\('transfer.data.folder_val_fraction' 0.2\); expected at least one in each"),
    ("corrupt-picture", lambda root: (image_folder(root / "mine", {"a": 4, "b": 4}),
                                      corrupt(root / "mine" / "b" / "b_02.png"), root / "mine")[2],
     r"{root}/mine/b/b_02.png: not a readable image \(\w+Error: .*\) \('transfer.data.folder'\)"),
    ("train-without-val", lambda root: image_folder(root / "mine" / "train", {"a": 2, "b": 2}).parent,
     r"{root}/mine: has train/ but no val/ \('transfer.data.folder'\); expected both"),
    ("class-in-train-not-val", lambda root: split_image_folder(root / "mine", {"a": 2, "b": 2, "c": 2},
                                                                {"a": 1, "b": 1}),
     r"{root}/mine: class folder\(s\) c in train/ but not in val/ \('transfer.data.folder'\); "
     r"expected the same class folders in train/ and val/"),
    ("class-in-val-not-train", lambda root: split_image_folder(root / "mine", {"a": 2, "b": 2},
                                                                {"a": 1, "b": 1, "z": 1}),
     r"{root}/mine: class folder\(s\) z in val/ but not in train/"),
    ("split-one-class", lambda root: split_image_folder(root / "mine", {"a": 2}, {"a": 1}),
     r"{root}/mine/train: only one class folder \(a/\)"),
    ("split-empty-val-class", lambda root: (split_image_folder(root / "mine", {"a": 2, "b": 2}, {"a": 1}),
                                            (root / "mine" / "val" / "b").mkdir(), root / "mine")[2],
     r"{root}/mine/val/b: class folder holds no pictures"),
    ("split-corrupt-val-picture", lambda root: (split_image_folder(root / "mine", {"a": 2, "b": 2}, {"a": 1, "b": 1}),
                                                corrupt(root / "mine" / "val" / "a" / "a_00.png"), root / "mine")[2],
     r"{root}/mine/val/a/a_00.png: not a readable image"),
]


@pytest.mark.parametrize(("build", "message"), [pytest.param(b, m, id=i) for i, b, m in FOLDER_ERRORS])
def test_bad_folder_is_refused_and_the_previous_output_kept(previous_output, tmp_path_factory, build, message):
    root = tmp_path_factory.mktemp("user")
    folder = build(root)
    with pytest.raises(PipelineError, match=message.format(root=root)):
        fetch(folder_cfg(folder), RAW_DIR, limits())
    assert_untouched(previous_output)


# --------------------------------------------------------------------------- batched transforms


def test_random_resized_boxes_follow_torchvisions_rules():
    sizes = torch.tensor([[20, 30]] * 500 + [[15, 22]] * 500 + [[200, 8]] * 10)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = ta.random_resized_boxes(sizes, torch.Generator().manual_seed(0), scale, ratio)
    again = ta.random_resized_boxes(sizes, torch.Generator().manual_seed(0), scale, ratio)
    assert torch.equal(boxes, again)
    top, left, h, w = boxes.unbind(1)
    assert torch.all(boxes == boxes.round()) and torch.all(top >= 0) and torch.all(left >= 0)
    assert torch.all(top + h <= sizes[:, 0]) and torch.all(left + w <= sizes[:, 1])
    drawn = slice(0, 1000)
    share = (h * w / (sizes[:, 0] * sizes[:, 1]))[drawn]
    assert share.min() >= 0.05 and share.max() <= 1.0 and share.std() > 0.2  # rounding widens 0.08 a bit
    aspect = (w / h)[drawn]
    assert aspect.min() > 0.5 and aspect.max() < 2.0
    # A 200 x 8 strip fits no box of ratio 3/4..4/3 and 8% of its area: the centred fallback,
    # full width, height 8 / (3/4) rounded.
    assert torch.equal(boxes[-1], torch.tensor([94.0, 0.0, 11.0, 8.0], dtype=torch.float64))


def test_crop_resize_matches_torchvision_resized_crop():
    images = torch.randint(0, 256, (2, 3, 20, 30), dtype=torch.uint8)
    sizes = torch.tensor([[20, 30], [15, 22]])
    images[1, :, 15:], images[1, :, :, 22:] = 0, 0  # the canvas around the smaller image
    boxes = torch.tensor([[2.0, 3.0, 10.0, 12.0], [5.0, 10.0, 10.0, 12.0]])
    out = ta.crop_resize(images, sizes, boxes, 32)
    for i, (top, left, h, w) in enumerate(boxes.int().tolist()):
        expected = TF.resized_crop(images[i].float(), top, left, h, w, [32, 32], antialias=False)
        # Equal inside; at the box's edges bilinear weights may reach the pixel just outside it.
        assert torch.allclose(out[i][:, 2:-2, 2:-2], expected[:, 2:-2, 2:-2], atol=1e-3)
    # A whole image: exactly torchvision's resize, the canvas padding never bleeds in.
    whole = ta.crop_resize(images, sizes, torch.tensor([[0.0, 0.0, 20.0, 30.0], [0.0, 0.0, 15.0, 22.0]]), 24)
    assert torch.allclose(whole[1], TF.resize(images[1, :, :15, :22].float(), [24, 24], antialias=False), atol=1e-3)
    # Same size box: the pixels themselves, mirrored where asked.
    same = ta.crop_resize(images, sizes, torch.tensor([[2.0, 3.0, 10.0, 10.0]] * 2), 10,
                          mirror=torch.tensor([False, True]))
    assert torch.allclose(same[0], images[0, :, 2:12, 3:13].float(), atol=1e-3)
    assert torch.allclose(same[1], images[1, :, 2:12, 3:13].flip(-1).float(), atol=1e-3)


def test_eval_crops_are_resize_then_center_crop():
    # A linear ramp: bilinear resampling reproduces it exactly, so one resample
    # of the centre box equals torchvision's Resize(32) + CenterCrop(16).
    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(60.0), indexing="ij")
    image = (2 * xs + ys).clamp(0, 255).to(torch.uint8).expand(3, -1, -1)[None]
    out = ta.eval_crops(image, torch.tensor([[40, 60]]), 16, crop_fraction=0.5)
    expected = TF.center_crop(TF.resize(image[0].float(), [32], antialias=False), [16, 16])
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 16, 16)
    assert (out[0].float() - expected).abs().max() <= 1.0


def test_training_transform_is_normalised_and_deterministic():
    images = torch.randint(0, 256, (6, 3, 25, 25), dtype=torch.uint8)
    sizes = torch.tensor([[25, 25]] * 6)
    hook = ta.RandomResizedCropFlip(images, sizes, 16, (0.25, 1.0), (0.75, 4 / 3), True, ta.imagenet_normalize())
    index = torch.tensor([0, 3, 5])
    a, b = hook(index, torch.Generator().manual_seed(1)), hook(index, torch.Generator().manual_seed(1))
    assert a.shape == (3, 3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, hook(index, torch.Generator().manual_seed(2)))
    raw = a * torch.tensor(ta.IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(ta.IMAGENET_MEAN).view(1, 3, 1, 1)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5  # (x / 255 - mean) / std, undone
