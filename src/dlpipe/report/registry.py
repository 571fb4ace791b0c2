"""What the report shows for each model: one small record per model.

A model's section lists the files it reads (metrics, LR range tests, training
histories, pictures) and the named extra blocks drawn from its other outputs.
The report renders a model, and each of its files, only when dvc.yaml has a
stage producing that file, so a registry entry for a model whose stages are not
in the graph yet is simply skipped. Each file is named by the path constant of
the stage module that writes it (``out("evaluate_houses", "METRICS")``), so a
path is declared once, where it is written; the ``report`` stage's deps are the
files listed here (``dlpipe.stages.report``).

To add a model: append a ``Model`` here and name its files.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import PurePath

from dlpipe.training import live


def out(stage_module: str, constant: str) -> str:
    """The path ``constant`` of ``dlpipe.stages.<stage_module>`` (imported by name, not by an
    import statement: the report depends on these files, not on the code that writes them)."""
    value = getattr(importlib.import_module(f"dlpipe.stages.{stage_module}"), constant)
    return PurePath(value).as_posix()


@dataclass(frozen=True)
class Headline:
    key: str  # key in the model's metrics JSON (the DVC metrics file: headline numbers only)
    label: str
    better: str = ""  # "higher" | "lower" | "" (a reference value: no direction)


@dataclass(frozen=True)
class LRCurve:
    label: str
    json: str  # reports/lr_find/<name>.json (lrs, losses, suggestions, rule, suggested_lr)
    lr_param: str = ""  # dotted params key of the LR training used ("auto" = the suggestion)
    history: str = ""  # the training stage's DVCLive folder whose lr series shows the schedule actually run
    # other values of lr_param: (value, label of another LRCurve of the model, factor),
    # e.g. ("head_div_10", "head", 0.1): a tenth of the LR the head stage used
    relative: tuple[tuple[str, str, float], ...] = ()


@dataclass(frozen=True)
class Panel:
    title: str
    columns: tuple[str, ...]
    log_y: bool | None = None  # None: log when the values span more than a factor of 100


@dataclass(frozen=True)
class History:
    label: str  # e.g. "head", "fine-tune": several histories share one axis, boundaries marked
    live: str  # the training stage's DVCLive folder (dlpipe.training.live), one step per epoch
    best: tuple[str, str] = ("", "")  # (column, "min" | "max"): the epoch whose weights were kept
    figure: str = ""  # histories with the same figure title share one epoch axis ("" = the model's title)
    train: str = ""  # dotted params key of the stage's training section (optimizer, schedule, ...)
    per_step: bool = False  # one step per training step (a GAN), with an epoch series: drawn as epoch means

    @property
    def series(self) -> str:
        """The folder of its series, the stage's output the report reads."""
        return live.plots_dir(PurePath(self.live)).as_posix()


@dataclass(frozen=True)
class Picture:
    path: str  # a PNG, or a folder of PNGs (a gallery in name order)
    caption: str
    most: int = 0  # a folder: show at most this many, evenly spaced, first and last included (0 = all)


@dataclass(frozen=True)
class Extra:
    name: str  # a function in dlpipe.report.page.EXTRAS
    files: tuple[str, ...] = ()  # what it reads besides the metrics: drawn only when dvc.yaml makes them


@dataclass(frozen=True)
class Model:
    name: str
    title: str
    summary: str
    metrics: str
    headline: tuple[Headline, ...]  # keys of ``metrics``
    params: tuple[str, ...]  # params.yaml sections shown beside the model
    lr_finds: tuple[LRCurve, ...] = ()
    histories: tuple[History, ...] = ()
    panels: tuple[Panel, ...] = ()  # empty: grouped from the CSV's columns
    pictures: tuple[Picture, ...] = ()
    extras: tuple[Extra, ...] = ()  # blocks drawn from the model's other outputs
    more_metrics: tuple[str, ...] = ()  # the model's other numbers (details files), listed in full below the section

    def files(self) -> list[str]:
        """Every file or folder this section reads, metrics first."""
        paths = [self.metrics, *self.more_metrics]
        paths += [lr.json for lr in self.lr_finds]
        paths += [history.series for history in self.histories]
        paths += [picture.path for picture in self.pictures]
        paths += [path for extra in self.extras for path in extra.files]
        return list(dict.fromkeys(paths))


MODELS: tuple[Model, ...] = (
    Model(
        name="houses",
        title="House prices MLP",
        summary="Kaggle House Prices: a fully connected net with a linear skip path on about 330 features, "
                "RMSLE loss; the validation split's model early-stopped, and a 5-fold cross-validation that "
                "picks the epoch count and bags its fold models for the submission.",
        metrics=out("evaluate_houses", "METRICS"),
        headline=(Headline("val_rmsle", "validation RMSLE", "lower"),
                  Headline("cv_rmsle", "cross-validated RMSLE (mean over the folds)", "lower")),
        more_metrics=(out("evaluate_houses", "DETAILS"),),
        params=("houses",),
        lr_finds=(LRCurve("houses MLP", out("_houses", "LR_FIND_JSON"), "houses.train.lr",
                         out("train_houses", "LIVE")),),
        histories=(History("training", out("train_houses", "LIVE"), ("val_rmsle", "min"),
                           train="houses.train"),),
        panels=(Panel("RMSLE (log-price RMSE)", ("train_loss", "val_rmsle")),
                Panel("learning rate", ("lr",), log_y=True)),
        extras=(Extra("houses_predictions", (out("evaluate_houses", "VAL_PREDICTIONS"),)),
                Extra("houses_cv", (out("cv_houses", "CURVE"), out("_houses", "CV_RECORD"))),
                Extra("submission", (out("evaluate_houses", "SUBMISSION"),))),
    ),
    Model(
        name="lenet",
        title="LeNet classifier",
        summary="LeNet-5 on 3x32x32 images (digits by default, CIFAR-10 on request).",
        metrics=out("evaluate_lenet", "METRICS"),
        headline=(Headline("test_accuracy", "test accuracy", "higher"),
                  Headline("val_accuracy", "validation accuracy", "higher")),
        more_metrics=(out("evaluate_lenet", "DETAILS"),),
        params=("lenet",),
        lr_finds=(LRCurve("LeNet", out("_lenet", "LR_FIND_JSON"), "lenet.train.lr",
                         out("train_lenet", "LIVE")),),
        histories=(History("training", out("train_lenet", "LIVE"), ("val_accuracy", "max"),
                           train="lenet.train"),),
        panels=(Panel("cross-entropy", ("train_loss", "val_loss")),
                Panel("validation accuracy", ("val_accuracy",), log_y=False),
                Panel("learning rate", ("lr",), log_y=True)),
        pictures=(Picture(out("evaluate_lenet", "CONFUSION_PNG"), "Confusion matrix on the test split "
                          "(cells coloured by the share of the actual class)"),),
        extras=(Extra("mistakes", (out("evaluate_lenet", "CONFUSION_JSON"),)),),
    ),
    Model(
        name="transfer",
        title="ResNet18 transfer",
        summary="ResNet18 with a new fc: first the head alone on the frozen backbone, then the whole "
                "net fine-tuned with discriminative LRs, from the head stage's best weights; both stages "
                "also from a random backbone, the baseline (the gains in the details).",
        metrics=out("evaluate_transfer", "METRICS"),
        headline=(Headline("head_val_accuracy", "validation accuracy after the head stage", "higher"),
                  Headline("finetune_val_accuracy", "validation accuracy after fine-tuning", "higher"),
                  Headline("head_gain", "head stage: accuracy gain over a random backbone", "higher")),
        more_metrics=(out("evaluate_transfer", "DETAILS"),),
        params=("transfer",),
        lr_finds=(LRCurve("head", out("_transfer", "HEAD_LR_JSON"), "transfer.head.train.lr",
                         out("train_transfer_head", "LIVE")),
                  LRCurve("fine-tune", out("_transfer", "FINETUNE_LR_JSON"), "transfer.finetune.train.lr",
                         out("train_transfer_finetune", "LIVE"), relative=(("head_div_10", "head", 0.1),)),
                  # the baseline's own range tests (random backbone): files named with _random
                  LRCurve("head, random backbone", out("_transfer", "HEAD_LR_JSON").replace(".json", "_random.json"),
                          "transfer.head.train.lr", out("train_transfer_head", "LIVE") + "_random"),
                  LRCurve("fine-tune, random backbone",
                          out("_transfer", "FINETUNE_LR_JSON").replace(".json", "_random.json"),
                          "transfer.finetune.train.lr", out("train_transfer_finetune", "LIVE") + "_random",
                          relative=(("head_div_10", "head, random backbone", 0.1),))),
        histories=(History("head", out("train_transfer_head", "LIVE"), ("val_accuracy", "max"),
                           train="transfer.head.train"),
                   History("fine-tune", out("train_transfer_finetune", "LIVE"), ("val_accuracy", "max"),
                           train="transfer.finetune.train"),
                   History("backbone", out("pretrain_transfer_backbone", "LIVE"), ("val_accuracy", "max"),
                           figure="Backbone pre-training (weights: pipeline)", train="transfer.pretrain.train")),
        pictures=(Picture(out("evaluate_transfer", "MISCLASSIFIED_PNG"),
                          "Validation images the fine-tuned network gets wrong"),),
    ),
    Model(
        name="dcgan",
        title="DCGAN",
        summary="DCGAN generator and discriminator (N(0, 0.02) init, BCE, one Adam each: lr and betas below); the same "
                "fixed noise drawn after every epoch; FID measured in the pipeline LeNet's feature space.",
        metrics=out("evaluate_dcgan", "METRICS"),
        headline=(Headline("fid", "FID (LeNet features)", "lower"),),
        more_metrics=(out("evaluate_dcgan", "DETAILS"), out("_dcgan", "TRAIN_RECORD")),
        params=("dcgan",),
        # per-epoch means of the per-step series (which `dvc plots` draws per step)
        histories=(History("training", out("_dcgan", "LIVE"), train="dcgan.train", per_step=True),
                   # the FID's own LeNet (train_fid_lenet): its own figure, its own panels
                   History("metric LeNet", out("train_fid_lenet", "LIVE"), ("val_accuracy", "max"),
                           figure="The FID's feature network (train_fid_lenet)", train="dcgan.feature_net.train")),
        panels=(Panel("losses (BCE), epoch means", ("loss_d", "loss_g")),
                Panel("discriminator outputs, epoch means", ("d_x", "d_g_z1", "d_g_z2"), log_y=False),
                Panel("metric LeNet: cross-entropy", ("train_loss", "val_loss")),
                Panel("metric LeNet: validation accuracy", ("val_accuracy",), log_y=False)),
        pictures=(Picture(out("_dcgan", "FINAL_GRID"), "Final generator on the fixed noise"),
                  Picture(out("_dcgan", "SAMPLES_DIR"), "The fixed noise after each epoch", most=12)),
        extras=(Extra("dcgan_fid", (out("evaluate_dcgan", "FID_RECORD"),)),
                Extra("class_shares", (out("evaluate_dcgan", "CLASS_HISTOGRAM"), out("evaluate_dcgan", "DETAILS")))),
    ),
)
