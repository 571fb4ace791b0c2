"""Stage evaluate_dcgan: an offline quality measure of the trained generator.

Inception weights cannot be downloaded here, so the Fréchet distance is taken
in the penultimate (84-d) layer of a LeNet trained for this purpose alone
(train_fid_lenet: models/fid_lenet.pt, its own fixed params
``dcgan.feature_net``, so that no ``lenet.*`` experiment moves the metric),
between N generated images and N real images that LeNet never saw in
training (data/prepared/gan's real pool: for digits, the classifier's val
and test splits, 538 images). Beside it, on the same N:

- fid_ceiling: the untrained generator (the very weights training started
  from, on the same noise);
- fid_floor: two disjoint real samples of the pool. A Fréchet distance
  estimated from N samples carries a bias that falls roughly as 1/N, so the
  floor must use the same N as the comparison: N = min(fid_max_samples,
  pool // 2), so that two disjoint halves exist (digits: 269).

Also the LeNet's classes of ``class_samples`` generated images: the smallest
class share (min_class_share: mode dropping) and the mean top-class
probability (mean_confidence: recognisable digits). For a folder of pictures
(dcgan.data.name: folder) these mean nothing: the pictures are not the
classifier's classes. They are left out, a ``class_metrics`` note says why, and
the class histogram is its header alone; the FID is kept (its feature space
is still the LeNet's).

reports/metrics/dcgan.json holds flat numbers only (and that note); how each
sample was drawn is written out in reports/fid/dcgan.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.data import classifier_prepared as cp
from dlpipe.data.gan_prepared import PREPARED_DIR, REAL_EVAL, TRAIN, load_images, load_meta
from dlpipe.declare import Stage
from dlpipe.layouts import CsvFile, JsonFile, metrics_files, record
from dlpipe.errors import PipelineError
from dlpipe.io import write_metrics
from dlpipe.models.lenet import LeNet
from dlpipe.metrics.fid import LeNetFeatures, frechet_distance, inception_distance
from dlpipe.pictures.sample_grid import to_uint8
from dlpipe.stages._dcgan import (CLASS_NOISE_OFFSET, EVAL_NOISE_OFFSET, GENERATOR_WEIGHTS, REAL_DRAW_OFFSET,
                                  build_networks, generate, noise)
from dlpipe.tensor_io import load_into

log = logging.getLogger(__name__)
FEATURE_WEIGHTS = Path("models/fid_lenet.pt")  # train_fid_lenet's output (not imported: it pulls in the loop)
METRICS = Path("reports/metrics/dcgan.json")  # HEADLINE only; every number (and the class note) in DETAILS
DETAILS = Path("reports/details/dcgan.json")
METRICS_FILE, DETAILS_FILE = metrics_files("evaluate_dcgan", METRICS, DETAILS)
HEADLINE = ("fid",)  # its floor and ceiling are references, in DETAILS and the report's FID figure
FID_RECORD = Path("reports/fid/dcgan.json")
CLASS_HISTOGRAM = Path("reports/plots/dcgan/class_histogram.csv")
# no rows for a folder of pictures, which has no classes
CLASS_HISTOGRAM_FILE = CsvFile("evaluate_dcgan", CLASS_HISTOGRAM.as_posix(), {"class": "text", "share": "number"},
                               min_rows=0)
# its metrics: numbers, and a note in place of the class metrics of a folder of pictures
FID_RECORD_FILE = JsonFile("evaluate_dcgan", FID_RECORD.as_posix(), record({"metrics": {
    "type": "object", "minProperties": 1, "additionalProperties": {"type": ["number", "string"]}}}))
BATCH = 500
NO_CLASS_METRICS = (
    "omitted: the pictures are not the classifier's classes (the FID's LeNet was trained on {dataset}), so "
    "min_class_share, max_class_share and mean_confidence would mean nothing and the class histogram is left "
    "empty; the FID is kept: it is measured in that LeNet's feature space, comparable between runs on the same "
    "pictures, not with the FIDs of other datasets")


def has_classes(meta: dict) -> bool:
    """The generated images can be read as the classifier's classes: not for a folder of pictures."""
    return meta["dataset"] != "folder"


STAGE = Stage(
    params=("seed", "device", "dcgan.image_size", "dcgan.model", "dcgan.evaluate", "dcgan.feature_net.model"),
    deps=(GENERATOR_WEIGHTS, FEATURE_WEIGHTS, PREPARED_DIR, cp.PREPARED_DIR),
    outs=(FID_RECORD, DETAILS),
    metrics=(METRICS,),
    plots=((CLASS_HISTOGRAM, {"template": "bar_horizontal", "x": "share", "y": "class"}),),
    mem_mb=4000, runtime=30,
)


def lenet_features(params: Params, device: torch.device) -> tuple[LeNetFeatures, list[str]]:
    meta = cp.load_meta()
    arch = params.dcgan.feature_net.model
    lenet = LeNet(len(meta["class_names"]), tuple(arch.channels), tuple(arch.hidden)).to(device)
    load_into(lenet, FEATURE_WEIGHTS)
    return LeNetFeatures(lenet, meta["mean"], meta["std"]).to(device), meta["class_names"]


def fid_sample_size(pool: int, cap: int) -> int:
    n = min(cap, pool // 2)
    if n < 2:
        raise PipelineError(f"the real pool for the FID holds {pool} images: two disjoint samples of at least 2 "
                            "are needed (data/prepared/gan)")
    return n


@torch.no_grad()
def class_shares(features: LeNetFeatures, images: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, float]:
    """Share of each predicted class, and the mean top-class probability."""
    probs = torch.cat([features.logits(images[i:i + BATCH]).softmax(dim=1) for i in range(0, len(images), BATCH)])
    top, predicted = probs.max(dim=1)
    shares = torch.bincount(predicted, minlength=num_classes).double() / len(images)
    return shares.cpu(), top.mean().item()


def write_histogram(path: Path, names: list[str], shares: torch.Tensor) -> None:
    frame = pd.DataFrame({"class": names, "share": shares.tolist()}, columns=["class", "share"])
    CLASS_HISTOGRAM_FILE.write(path, frame, float_format="%.6f")


def real_samples(params: Params, meta: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The two disjoint real samples of N images (the comparison's and the floor's), and the pool size."""
    pool = load_images(REAL_EVAL if meta["eval_pool"] == "real_eval" else TRAIN, meta, device)
    n = fid_sample_size(len(pool), params.dcgan.evaluate.fid_max_samples)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(params.seed + REAL_DRAW_OFFSET))
    return pool[order[:n].to(device)], pool[order[n:2 * n].to(device)], len(pool)


def eval_noise(params: Params, n: int, device: torch.device) -> torch.Tensor:
    return noise(n, params.dcgan.model.nz, params.seed + EVAL_NOISE_OFFSET, device)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    cfg, nz = params.dcgan.evaluate, params.dcgan.model.nz
    meta = load_meta()
    features, class_names = lenet_features(params, device)
    real_a, real_b, pool_size = real_samples(params, meta, device)
    n = len(real_a)

    untrained, _ = build_networks(params, meta["nc"], device)  # training's starting point
    trained, _ = build_networks(params, meta["nc"], device)
    load_into(trained, GENERATOR_WEIGHTS)
    z = eval_noise(params, n, device)
    fake, fake_untrained = to_uint8(generate(trained, z)), to_uint8(generate(untrained, z))

    fid = frechet_distance(features, real_a, fake)
    ceiling = frechet_distance(features, real_a, fake_untrained)
    floor = frechet_distance(features, real_a, real_b)
    classes = has_classes(meta)
    if classes:
        shares, confidence = class_shares(
            features, to_uint8(generate(trained, noise(cfg.class_samples, nz, params.seed + CLASS_NOISE_OFFSET,
                                                       device))), len(class_names))
    else:
        note = NO_CLASS_METRICS.format(dataset=cp.load_meta()["dataset"])
    metrics = {
        "fid": fid, "fid_ceiling": ceiling, "fid_floor": floor,
        "fid_over_ceiling": fid / ceiling if ceiling > 0 else float("inf"),
        "fid_over_floor": fid / floor if floor > 0 else float("inf"),
        "fid_samples": n, "fid_real_pool": pool_size,
    }
    if classes:
        metrics.update({
            "class_samples": cfg.class_samples,
            "min_class_share": shares.min().item(), "max_class_share": shares.max().item(),
            "mean_confidence": confidence,
        })
    else:
        metrics["class_metrics"] = note
    if cfg.inception_fid:
        metrics["fid_inception"] = inception_distance(real_a, fake)
        metrics["fid_inception_floor"] = inception_distance(real_a, real_b)
    record = {
        "feature_network": f"{FEATURE_WEIGHTS} (LeNet {list(params.dcgan.feature_net.model.channels)}/"
                           f"{list(params.dcgan.feature_net.model.hidden)}, train_fid_lenet), penultimate layer, "
                           f"{features.num_features} features",
        "implementation": "torchmetrics.image.fid.FrechetInceptionDistance(feature=<that LeNet>)",
        "image_path": "uint8 pictures (generated ones quantised like a saved PNG) -> 3 channels, 32 x 32, "
                      "normalised by the classifier's training-split mean and std",
        "real_pool": f"{meta['eval_pool_from']}; {pool_size} images",
        "real_sample": f"the first {n} of a permutation of the pool drawn with seed {params.seed + REAL_DRAW_OFFSET}",
        "floor_sample": f"the next {n} of that permutation, disjoint from the real sample",
        "generated_sample": f"{n} images of {GENERATOR_WEIGHTS} (eval mode) from N(0, 1) noise drawn with seed "
                            f"{params.seed + EVAL_NOISE_OFFSET}",
        "ceiling_sample": f"the untrained generator (its initial weights, seed {params.seed}) on that same noise",
        "class_sample": (f"{cfg.class_samples} generated images from noise drawn with seed "
                         f"{params.seed + CLASS_NOISE_OFFSET}, classified by the same LeNet") if classes else note,
        "why_n": "N = min(dcgan.evaluate.fid_max_samples, pool // 2): the floor needs two disjoint real samples, "
                 "and every distance uses the same N because the estimate's bias falls roughly as 1/N",
        **({"class_shares": dict(zip(class_names, shares.tolist()))} if classes else {}),
        "metrics": metrics,
    }
    if classes:
        write_histogram(CLASS_HISTOGRAM, class_names, shares)
    else:  # a declared output: it must exist, so the header alone (no class, no share)
        write_histogram(CLASS_HISTOGRAM, [], torch.zeros(0))
    FID_RECORD_FILE.write(FID_RECORD, record)
    write_metrics(METRICS_FILE, DETAILS_FILE, metrics, HEADLINE)
    if not classes:
        log.info("dcgan: fid %.3f (ceiling %.3f, floor %.3f; fid/ceiling %.4f, fid/floor %.2f; N %d of a pool of "
                 "%d); class metrics %s", fid, ceiling, floor, metrics["fid_over_ceiling"], metrics["fid_over_floor"],
                 n, pool_size, note.split(" (")[0])
        return
    log.info("dcgan: fid %.3f (ceiling %.3f, floor %.3f; fid/ceiling %.4f, fid/floor %.2f; N %d of a pool of %d), "
             "min_class_share %.3f, mean_confidence %.3f", fid, ceiling, floor, metrics["fid_over_ceiling"],
             metrics["fid_over_floor"], n, pool_size, metrics["min_class_share"], confidence)
