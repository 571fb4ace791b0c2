"""LeNet: the pieces of the time-to-accuracy comparison, on the same prepared data
(data/prepared/classifier, whatever dataset it holds). ``benchmarks.reference``
times them against each other, alternating; ``python -m benchmarks --only
reference`` runs it.

(a) ``seed_recipe``: the CIFAR-10 tutorial's recipe as written: each image turned into a PIL
    image, then torchvision's ToTensor and Normalize(0.5, 0.5), through a
    DataLoader with batch 4, shuffle and 2 workers; the tutorial's LeNet,
    cross-entropy, SGD lr 0.001 momentum 0.9, 2 epochs. Its test accuracy after
    2 epochs is the target.
(b) ``pipeline_to_accuracy``: the pipeline's training (train_lenet's loaders,
    model, optimizer, schedule and ``loop.train_one_epoch``), stopped after the
    first epoch whose test accuracy reaches the target. The time counts
    training and the per-epoch test evaluations; ``time_range_test`` times the
    LR range test that ``lr: auto`` reads, apart.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlpipe.config import Params
from dlpipe.stages._lenet import LR_FIND_JSON, build_model, eval_loader, train_loader
from dlpipe.training import loop, lr_finder
from dlpipe.training.schedules import build_optimizer, build_scheduler
from dlpipe.training.tasks import classification


# --------------------------------------------------------------------------- (a) the seed, as written


class SeedLeNet(nn.Module):
    """The tutorial's class, verbatim but for the number of classes."""

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
    train, test = train_loader(params.lenet, params.seed, meta, device), eval_loader("test", meta, device)
    model = build_model(params.lenet, params.seed, len(meta["class_names"]), device)
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
    loader = train_loader(params.lenet, params.seed, meta, device, capped=False)
    model = build_model(params.lenet, params.seed, len(meta["class_names"]), device)
    optimizer = build_optimizer(model.parameters(), params.lenet.train, lr=params.lenet.lr_find.start_lr)
    range_test(model, optimizer, classification().loss_fn, loader, params.lenet.lr_find, device)
    return time.perf_counter() - start
