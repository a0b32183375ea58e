"""Write the default out-of-distribution set: Fashion-MNIST's test-set bags, as PNG files.

    python scripts/fashion_mnist_ood.py OUT_DIR [COUNT]

A bag is none of the ten clothing classes, and a 28 px greyscale product image is not
a photo: images of another thing in another domain. The first COUNT (default 500)
bags of the test set, in its order, so the files are the same on every machine
(data/ood.dvc pins them). keras.datasets.fashion_mnist downloads the data, or reads
it offline from $KERAS_HOME/datasets/fashion-mnist/ (scripts/offline-cache.sh fills
it from Debian's dataset-fashion-mnist package). Fashion-MNIST: Zalando, MIT licence.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BAG = 8  # Fashion-MNIST's class index of "Bag"


def main(out: Path, count: int) -> None:
    # TensorFlow's start-up lines filtered as in every stage (pipeline/lib/quiet.py), before keras is
    # imported; a copy of this script without the project beside it shows them
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from pipeline.lib import quiet
    except ModuleNotFoundError:
        pass
    else:
        quiet.install()
    from keras.datasets import fashion_mnist

    try:
        _, (x, y) = fashion_mnist.load_data()
    except Exception as err:  # a failed download raises URLError, OSError, ValueError...
        sys.exit(f"fashion_mnist_ood: could not read Fashion-MNIST ({type(err).__name__}: {err}). Offline, install "
                 "Debian's copy (apt-get install dataset-fashion-mnist) and run `make offline-cache`, which links it "
                 "into Keras' cache")
    bags = x[y == BAG][:count]
    out.mkdir(parents=True)
    for i, pixels in enumerate(bags):
        Image.fromarray(np.asarray(pixels, np.uint8), mode="L").save(out / f"fashion-mnist-bag-{i:04d}.png")
    print(f"fashion_mnist_ood: {len(bags)} bags written to {out}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) == 3 else 500)
