"""LeNet: the seed's reference recipe against the pipeline's training, on the
same prepared data (data/prepared/classifier, whatever dataset it holds).

(a) The seed's recipe as written: each image turned into a PIL image, then
    torchvision's ToTensor and Normalize(0.5, 0.5), through a DataLoader with
    batch 4, shuffle and 2 workers; the seed's LeNet, cross-entropy, SGD lr
    0.001 momentum 0.9, 2 epochs. Run twice: with torch's default threads in
    the main process beside the 2 workers (as written), and with 1 thread.
    Its test accuracy after 2 epochs is the target.
(b) The pipeline's training with the default params (train_lenet's loaders,
    model, optimizer, schedule and ``loop.train_one_epoch``), stopped after
    the first epoch whose test accuracy reaches the target. The time counts
    training and the per-epoch test evaluations; the LR range test that
    ``lr: auto`` reads is timed apart.
(c) Throughput of ``loop.train_one_epoch`` against a bare PyTorch loop over
    the same tensors, batches, augmentation and batch size.

    python -m dlpipe.bench.lenet [--params params.yaml] [--repeats 3]

Run it after ``dvc repro train_lenet`` (it needs the prepared data and, for
``lr: auto``, reports/lr_find/lenet.json). Timings are wall-clock seconds on
this machine; other load on the machine shows up in them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dlpipe import runtime  # noqa: E402
from dlpipe.config import Params, load_params  # noqa: E402
from dlpipe.data.classifier_prepared import load_meta, load_split  # noqa: E402
from dlpipe.stages._lenet import LR_FIND_JSON, build_model, eval_loader, train_loader  # noqa: E402
from dlpipe.training import loop, lr_finder  # noqa: E402
from dlpipe.training.schedules import build_optimizer, build_scheduler  # noqa: E402
from dlpipe.training.tasks import classification  # noqa: E402


# --------------------------------------------------------------------------- (a) the seed, as written


class SeedLeNet(nn.Module):
    """The seed's class, verbatim but for the number of classes."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class PILImages(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: an HWC uint8 array to a
    PIL image, then the transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # N x H x W x C, as CIFAR10.data
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def seed_recipe(train: dict, test: dict, num_classes: int, threads: int | None, seed: int) -> dict:
    import torchvision.transforms as transforms

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
        start = time.perf_counter()
        trainloader = torch.utils.data.DataLoader(PILImages(train["images"], train["labels"], transform),
                                                  batch_size=4, shuffle=True, num_workers=2)
        testloader = torch.utils.data.DataLoader(PILImages(test["images"], test["labels"], transform),
                                                 batch_size=4, shuffle=False, num_workers=2)
        net = SeedLeNet(num_classes)
        criterion = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
        for _epoch in range(2):
            for inputs, labels in trainloader:
                optimizer.zero_grad()
                loss = criterion(net(inputs), labels)
                loss.backward()
                optimizer.step()
        train_s = time.perf_counter() - start
        correct = total = 0
        with torch.no_grad():
            for inputs, labels in testloader:
                correct += (net(inputs).argmax(1) == labels).sum().item()
                total += len(labels)
        return {"threads": torch.get_num_threads(), "train_s": train_s,
                "total_s": time.perf_counter() - start, "test_accuracy": correct / total}
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- (b) the pipeline


def pipeline_to_accuracy(params: Params, meta: dict, target: float, device: torch.device) -> dict:
    cfg = params.lenet.train
    lr = lr_finder.resolve_lr(cfg.lr, LR_FIND_JSON, "lenet.train.lr")
    task = classification()
    start = time.perf_counter()
    train, test = train_loader(params, meta, device), eval_loader("test", meta, device)
    model = build_model(params, len(meta["class_names"]), device)
    optimizer = build_optimizer(model.parameters(), cfg, lr)
    scheduler, per_batch = build_scheduler(optimizer, cfg, len(train))
    accuracy, epoch = 0.0, 0
    for epoch in range(cfg.epochs):
        train.set_epoch(epoch)
        loop.train_one_epoch(model, train, task.loss_fn, optimizer, scheduler if per_batch else None, epoch)
        if scheduler is not None and not per_batch:
            scheduler.step()
        accuracy = loop.evaluate(model, test, task)["val_accuracy"]  # the test split here
        if accuracy >= target:
            break
    return {"seconds": time.perf_counter() - start, "epochs": epoch + 1, "test_accuracy": accuracy,
            "reached": accuracy >= target, "lr": lr}


def time_range_test(params: Params, meta: dict, device: torch.device) -> float:
    from dlpipe.training.lr_finder import range_test

    start = time.perf_counter()
    loader = train_loader(params, meta, device, capped=False)
    model = build_model(params, len(meta["class_names"]), device)
    optimizer = build_optimizer(model.parameters(), params.lenet.train, lr=params.lr_find.lenet.start_lr)
    range_test(model, optimizer, classification().loss_fn, loader, params.lr_find.lenet, device)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- (c) loop overhead


def bare_epoch(model, loader, optimizer) -> None:
    """The same batches (TensorLoader), a plain PyTorch step."""
    model.train()
    for inputs, targets in loader:
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()


def throughput(params: Params, meta: dict, device: torch.device, repeats: int) -> dict:
    cfg, task = params.lenet.train, classification()
    loader = train_loader(params, meta, device, capped=False)
    images = len(loader.inputs)
    runs = {"pipeline": [], "bare": []}
    models = {name: build_model(params, len(meta["class_names"]), device) for name in runs}
    optimizers = {name: build_optimizer(models[name].parameters(), cfg, 0.01) for name in runs}
    for epoch in range(repeats + 1):  # the first round warms up, interleaved so load hits both alike
        loader.set_epoch(epoch)
        for name in runs:
            start = time.perf_counter()
            if name == "pipeline":
                loop.train_one_epoch(models[name], loader, task.loss_fn, optimizers[name], None, epoch)
            else:
                bare_epoch(models[name], loader, optimizers[name])
            if epoch:
                runs[name].append(time.perf_counter() - start)
    rate = {name: images / statistics.median(seconds) for name, seconds in runs.items()}
    return {"images_per_epoch": images, "batch_size": loader.batch_size,
            "pipeline_img_s": rate["pipeline"], "bare_img_s": rate["bare"],
            "pipeline_slower_by": 1 - rate["pipeline"] / rate["bare"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m dlpipe.bench.lenet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per loop in (c)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    device = runtime.setup(params.seed, params.device, params.threads)
    threads = torch.get_num_threads()
    meta = load_meta()
    train, test = load_split("train"), load_split("test")
    print(f"data: {meta['dataset']}, {len(train['labels'])} train / {len(test['labels'])} test images; "
          f"device {device}, torch threads {threads}, {os.cpu_count()} CPUs", flush=True)

    as_written = seed_recipe(train, test, len(meta["class_names"]), None, params.seed)
    print(f"(a) seed recipe as written ({as_written['threads']} threads + 2 workers): "
          f"{as_written['train_s']:.2f} s for 2 epochs, test accuracy {as_written['test_accuracy']:.4f}", flush=True)
    one_thread = seed_recipe(train, test, len(meta["class_names"]), 1, params.seed)
    print(f"(a) seed recipe, 1 thread + 2 workers: {one_thread['train_s']:.2f} s, "
          f"test accuracy {one_thread['test_accuracy']:.4f}", flush=True)
    best = min(as_written, one_thread, key=lambda r: r["train_s"])
    target = as_written["test_accuracy"]

    torch.set_num_threads(threads)
    ours = pipeline_to_accuracy(params, meta, target, device)
    print(f"(b) pipeline: test accuracy {ours['test_accuracy']:.4f} >= {target:.4f} after {ours['epochs']} "
          f"epoch(s), {ours['seconds']:.2f} s (peak lr {ours['lr']:.4g})", flush=True)
    lr_s = time_range_test(params, meta, device)
    print(f"    its LR range test (lr: auto) takes {lr_s:.2f} s more", flush=True)
    speedup_written = as_written["train_s"] / ours["seconds"]
    speedup_best = best["train_s"] / ours["seconds"]
    print(f"time to the seed's 2-epoch accuracy: {speedup_written:.1f}x faster than the seed as written, "
          f"{speedup_best:.1f}x faster than its better thread setting "
          f"({best['threads']} thread(s)); with the range test counted: "
          f"{best['train_s'] / (ours['seconds'] + lr_s):.1f}x", flush=True)

    rates = throughput(params, meta, device, args.repeats)
    print(f"(c) throughput at batch {rates['batch_size']}: pipeline loop {rates['pipeline_img_s']:.0f} img/s, "
          f"bare loop {rates['bare_img_s']:.0f} img/s: the pipeline is "
          f"{100 * rates['pipeline_slower_by']:.1f}% slower", flush=True)

    figures = {"dataset": meta["dataset"], "torch_threads": threads, "seed_as_written": as_written,
               "seed_one_thread": one_thread, "pipeline": ours, "lr_range_test_s": lr_s,
               "speedup_vs_as_written": speedup_written, "speedup_vs_best_seed": speedup_best, "throughput": rates}
    if args.json:
        from dlpipe.io import write_json

        write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
