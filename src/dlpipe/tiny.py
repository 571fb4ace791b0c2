"""Params overrides that make every stage take seconds: for smoke tests.

Dotted keys of params.yaml (set with ``conftest.write_params`` in the tests, with
``override_raw`` in the benchmarks): CPU, a few epochs or batches per training,
short LR range tests, small FID and class samples. The test suite's tiny
pipeline runs (tests/conftest.py ``TINY_OVERRIDES``) and ``python -m benchmarks
--quick`` (its clean-state run and its lr_cost part) both use this one dict, so
that a renamed params key is changed here once. No stage imports this module:
it is no code dependency of any stage in dvc.yaml.
"""

OVERRIDES = {
    "device": "cpu",
    "houses.lr_find.num_iter": 20, "houses.train.epochs": 3, "houses.train.patience": 0,
    "houses.cv.epochs": 3, "houses.cv.n_seeds": 2,
    "lenet.lr_find.num_iter": 20, "lenet.train.epochs": 1, "lenet.train.max_batches": 3,
    "dcgan.feature_net.train.epochs": 1, "dcgan.feature_net.train.max_batches": 3,
    "dcgan.train.epochs": 1, "dcgan.train.max_batches": 2, "dcgan.train.grid_images": 16,
    "dcgan.evaluate.fid_max_samples": 100, "dcgan.evaluate.class_samples": 100,
    "transfer.augment.image_size": 32, "transfer.pretrain.train.epochs": 1, "transfer.pretrain.train.max_batches": 2,
    "transfer.head.lr_find.num_iter": 10, "transfer.head.train.epochs": 1, "transfer.head.train.max_batches": 2,
    "transfer.finetune.lr_find.num_iter": 10, "transfer.finetune.train.epochs": 1,
    "transfer.finetune.train.max_batches": 2,
}
