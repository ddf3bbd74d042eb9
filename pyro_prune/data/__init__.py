"""Data sets: one loader for the benchmark sets used by the pruning papers.

Everything goes through :func:`load_dataset`, which returns a :class:`LabeledDataset`: a
:class:`torch.utils.data.TensorDataset` of ``(inputs, targets)`` with an ``.info``
(:class:`DatasetInfo`) describing the task, the shapes and the normalisation that was applied.

    >>> from pyro_prune.data import load_dataset, train_val_split
    >>> train = load_dataset("digits", "train")           # embedded, needs no files
    >>> train.inputs.shape, train.info.num_classes
    (torch.Size([1438, 1, 8, 8]), 10)
    >>> fit_set, val_set = train_val_split(train, val_fraction=0.2, seed=0)

Known names (see :func:`available_datasets`):

==========================  ===========================================================
``digits``                  scikit-learn's bundled 8x8 digits (1797 images, 1x8x8), a
                            fixed stratified 80/20 split (seed 0): 1438 train, 359 test.
``mnist``                   IDX files in ``<root>/mnist/`` (60000 / 10000, 1x28x28).
``fashion-mnist``           IDX files in ``<root>/fashion-mnist/`` (60000 / 10000).
``cifar10``                 python pickle batches in ``<root>/cifar10/cifar-10-batches-py/``
                            or ``<root>/cifar-10-batches-py/`` (50000 / 10000, 3x32x32).
``uci/<name>``              UCI regression sets in ``<root>/uci/<name>/`` with the standard
                            Hernandez-Lobato & Adams (2015) splits, chosen by ``split_index``.
==========================  ===========================================================

``root`` defaults to the environment variable ``PYRO_PRUNE_DATA``. IDX files may be gzip
compressed (``*.gz``, as published) or uncompressed. Nothing is ever downloaded at import;
``download=True`` (or :func:`download_dataset`) fetches the published files of MNIST,
Fashion-MNIST and CIFAR-10 with ``urllib`` and checks their md5 against the published values.
Every file is checked while it is read (IDX magic numbers, sizes, counts, label ranges, UCI
split partitions); ``verify=True`` also compares files with their published md5. A damaged
file raises :class:`CorruptFileError` (a ``ValueError``) naming it.

Normalisation (``normalize=True``):

* images: pixels are scaled to [0, 1] and then standardised per channel,
  ``x = (pixel / 255 - mean_c) / std_c``, with the standard training-set constants
  (MNIST 0.1307 / 0.3081, Fashion-MNIST 0.2860 / 0.3530, CIFAR-10 per channel); digits use
  ``pixel / 16`` and the mean / std of its fixed training split;
* UCI: every feature and the target are standardised with the mean and (population) standard
  deviation of the *training* rows of the chosen split, as in the PBP protocol
  (Hernandez-Lobato & Adams, ICML 2015); a constant feature gets std 1. The statistics are kept
  in ``info.normalization`` so predictions can be mapped back with
  :meth:`Normalization.denormalize_targets` (an RMSE in original units is ``rmse * target_std``).

Validation split: :func:`train_val_split` holds out a seeded, stratified fraction of a training
set (the BMRS paper, Wright et al. NeurIPS 2024, uses 80/20 of the training set).

Layout: :mod:`~pyro_prune.data.types` (the public types), :mod:`~pyro_prune.data.files` (the one
reader and checker every family uses: checksums, gzip, downloads), one module per family
(:mod:`~pyro_prune.data.digits`, :mod:`~pyro_prune.data.idx`, :mod:`~pyro_prune.data.cifar`,
:mod:`~pyro_prune.data.uci`), :mod:`~pyro_prune.data.registry` (names -> families, the entry
points) and :mod:`~pyro_prune.data.split` (validation splits).
"""

from __future__ import annotations

from pyro_prune.data.files import ENV_VAR
from pyro_prune.data.registry import (
    available_datasets,
    download_dataset,
    load_dataset,
    resolve_root,
)
from pyro_prune.data.split import train_val_split
from pyro_prune.data.types import (
    CorruptFileError,
    DatasetInfo,
    LabeledDataset,
    Normalization,
    Split,
    Task,
)

__all__ = [
    "ENV_VAR",
    "CorruptFileError",
    "DatasetInfo",
    "LabeledDataset",
    "Normalization",
    "Split",
    "Task",
    "available_datasets",
    "download_dataset",
    "load_dataset",
    "resolve_root",
    "train_val_split",
]
