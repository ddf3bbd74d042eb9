"""scikit-learn's bundled 8x8 digits: embedded, needs no files."""

from __future__ import annotations

import numpy as np

from pyro_prune.data.files import Loaded, LoadOptions, Source, loaded_images
from pyro_prune.data.split import split_indices
from pyro_prune.data.types import Split

DIGIT_NAMES = tuple(str(i) for i in range(10))

__all__ = ["DIGIT_NAMES", "DigitsSource"]


class DigitsSource(Source):
    """scikit-learn's bundled UCI optical digits (8x8, values 0..16); no files needed."""

    name = "digits"
    needs_root = False
    test_fraction = 0.2
    seed = 0

    def load(self, opts: LoadOptions) -> Loaded:
        from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

        bunch = load_digits()
        labels = np.asarray(bunch.target, dtype=np.int64)
        pixels = np.asarray(bunch.data).reshape(-1, 1, 8, 8)
        train_idx, test_idx = split_indices(labels, self.test_fraction, self.seed, True)
        idx = train_idx if opts.split is Split.TRAIN else test_idx
        train_pixels = pixels[train_idx].astype(np.float64) / 16.0
        return loaded_images(
            pixels[idx], labels[idx], scale=16.0, name=self.name, split=opts.split,
            class_names=DIGIT_NAMES, normalize=opts.normalize, mean=(float(train_pixels.mean()),),
            std=(float(train_pixels.std()),),
        )
