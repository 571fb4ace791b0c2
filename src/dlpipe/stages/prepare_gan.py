"""Stage prepare_gan: the GAN's images as uint8 N x nc x S x S in data/prepared/gan/.

- digits, cifar10: the prepared classifier images (lenet.data.name must
  name the same dataset). The DCGAN trains on the classifier's *training*
  split only, so the val and test splits stay unseen by both the LeNet and the
  GAN: they are the real pool of the FID (real_eval.pt).
- folder: every picture under dcgan.data.folder (or a seeded sample of
  max_images), shorter side resized to S and centre-cropped. The FID's LeNet
  never saw any of them, so the training images are the real pool.

Channels follow dcgan.model.nc (``auto``: grey for digits), size dcgan.image_size.
"""

from __future__ import annotations

import logging

import torch

from dlpipe.config import Params
from dlpipe.data import classifier_prepared as cp
from dlpipe.data import gan_images
from dlpipe.data.gan_prepared import META_JSON, PREPARED_DIR, REAL_EVAL, TRAIN, save_images
from dlpipe.declare import Stage
from dlpipe.errors import PipelineError
from dlpipe.io import atomic_dir, write_json
from dlpipe.stages._dcgan import resolve_nc

log = logging.getLogger(__name__)


STAGE = Stage(
    params=("seed", "dcgan.data", "dcgan.image_size", "dcgan.model.nc"),
    deps=(cp.PREPARED_DIR,),
    outs=(PREPARED_DIR,),
    mem_mb=8000, runtime=60,
)


def from_classifier(name: str, nc: int, size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    meta = cp.load_meta()
    if meta["dataset"] != name:
        raise PipelineError(
            f"params.yaml: 'dcgan.data.name' is '{name}' but data/prepared/classifier holds {meta['dataset']} "
            f"(lenet.data.name); set both to the same dataset")
    splits = {s: cp.load_split(s)["images"] for s in cp.SPLITS}
    convert = lambda images: gan_images.resize(gan_images.to_channels(images, nc), size)  # noqa: E731
    train = convert(splits["train"])
    pool = convert(torch.cat([splits["val"], splits["test"]]))
    record = {"train_from": f"{name}: the classifier's train split ({len(train)} images)",
              "eval_pool": "real_eval",
              "eval_pool_from": f"{name}: the classifier's val ({len(splits['val'])}) and test "
                                f"({len(splits['test'])}) splits, which neither the LeNet nor the DCGAN trains on"}
    return train, pool, record


def main(params: Params) -> None:
    cfg, size = params.dcgan.data, params.dcgan.image_size
    dataset = cfg.name
    nc = resolve_nc(params.dcgan.model.nc, dataset)
    if cfg.name == "folder":
        train, files = gan_images.read_folder(cfg.folder, size, nc, cfg.max_images, params.seed)
        pool = None
        record = {"train_from": f"folder {cfg.folder}: {len(files)} pictures"
                                + (f" (a seeded sample of max_images {cfg.max_images})" if cfg.max_images else ""),
                  "eval_pool": "train",
                  "eval_pool_from": "the training pictures: the FID's LeNet (trained on the classifier data) "
                                    "never saw any of them"}
    else:
        train, pool, record = from_classifier(cfg.name, nc, size)
    meta = {"dataset": dataset, "image_size": size, "nc": nc, **record,
            "sizes": {"train": len(train), "real_eval": len(pool) if pool is not None else len(train)}}
    with atomic_dir(PREPARED_DIR) as staging:
        save_images(staging / TRAIN, train)
        if pool is not None:
            save_images(staging / REAL_EVAL, pool)
        write_json(staging / META_JSON, meta)
    log.info("prepared GAN data from %s: %d training images, %d real images for the FID, %d x %d x %d",
             dataset, meta["sizes"]["train"], meta["sizes"]["real_eval"], nc, size, size)
