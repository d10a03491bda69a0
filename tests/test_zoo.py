"""Built-in models: each loads offline, has the documented size, and predicts sensibly on real inputs."""

import numpy as np
import pytest
import torch

from bitsieve import data, zoo
from bitsieve.errors import UserError
from bitsieve.zoo import common, efficientnet, lenet, minilm, mobilenet, mtcnn

torch.set_num_threads(1)
CATS = {281, 282, 283, 285}  # tabby, tiger cat, Persian, Egyptian cat
FAST = [name for name in zoo.BUILTINS if name != "minilm-l6"]


def test_registry_names():
    assert set(zoo.BUILTINS) == {
        "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "mobilenet-v2",
        "mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet", "minilm-l6", "lenet-mnist",
    }  # fmt: skip
    assert {b.task for b in zoo.BUILTINS.values()} == {"imagenet", "mnist", "faces", "stsb"}
    with pytest.raises(UserError, match="unknown built-in model 'resnet-50'.*efficientnet-lite0.*lenet-mnist"):
        zoo.get("resnet-50")


@pytest.mark.parametrize("name", FAST)
def test_builtin_loads_with_its_param_count(name):
    builtin = zoo.get(name)
    module = builtin.load()
    assert not module.training
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert sum(p.numel() for p in module.parameters()) == builtin.params
    with torch.no_grad():
        out = module(builtin.sample_input(2))
    out = out if isinstance(out, tuple) else (out,)
    assert all(o.shape[0] == 2 and torch.isfinite(o).all() for o in out)


def test_sample_input_limits():
    with pytest.raises(UserError, match="at least 1"):
        zoo.get("mtcnn-rnet").sample_input(0)
    with pytest.raises(UserError, match="only 200 LFW"):
        zoo.get("mtcnn-rnet").sample_input(201)


def test_bundled_samples_without_shared_data(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "shared_path", lambda name: tmp_path / name)
    x = zoo.get("efficientnet-lite1").sample_input(len(common.PHOTOS))
    assert x.shape == (len(common.PHOTOS), 3, 240, 240) and x.dtype == torch.float32
    with pytest.raises(UserError, match="only 8 sample photos"):
        zoo.get("mobilenet-v2").sample_input(9)
    assert minilm.sample_sentences(2) == list(minilm.SENTENCES[:2])


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_efficientnet_photos(variant):
    module = efficientnet.load(variant)
    with torch.no_grad():
        prob = module(efficientnet.preprocess([common.photo("coffee"), common.photo("chelsea")], variant)).softmax(1)
    top = prob.argmax(1).tolist()
    assert top[0] == 967 and top[1] in CATS  # espresso; a cat
    if variant == "lite0":
        assert prob[0, 967] > 0.9  # measured 0.96


def test_mobilenet_photos():
    with torch.no_grad():
        prob = mobilenet.load()(mobilenet.preprocess([common.photo("coffee"), common.photo("chelsea")])).softmax(1)
    assert prob[0].argmax() == 967 and prob[0, 967] > 0.95  # measured 0.99
    assert int(prob[1].argmax()) in CATS


# measured on the 200 LFW subset images at fp32: share of faces scored > 0.5, of non-faces < 0.5
MTCNN_MEASURED = {"pnet": (0.99, 1.00), "rnet": (1.00, 1.00), "onet": (1.00, 1.00)}


@pytest.mark.parametrize("stage", ["pnet", "rnet", "onet"])
def test_mtcnn_separates_faces(stage):
    images, labels = data.faces()
    prob = mtcnn.face_probability(mtcnn.load(stage), mtcnn.preprocess(images, stage))
    faces, others = MTCNN_MEASURED[stage]
    assert (prob[labels == 1] > 0.5).mean() >= faces - 0.02
    assert (prob[labels == 0] < 0.5).mean() >= others - 0.02


def test_lenet_checkpoint_accuracy():
    assert lenet.accuracy(lenet.load()) >= 0.97  # measured 98.13 %


def test_lenet_train_rejects_no_epochs():
    with pytest.raises(UserError, match="epochs"):
        lenet.train(epochs=0)


@pytest.mark.slow
def test_minilm_embeddings():
    module = zoo.get("minilm-l6").load()
    batch = zoo.get("minilm-l6").sample_input(3)
    assert {"input_ids", "attention_mask"} <= set(batch)
    assert sum(p.numel() for p in module.parameters()) == zoo.get("minilm-l6").params
    e = minilm.embed(module, list(minilm.SENTENCES[:5]))
    assert e.shape == (5, 384) and e.dtype == np.float32
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert e[0] @ e[1] > 0.7 > 0.3 > e[0] @ e[4]  # paraphrase 0.85, unrelated -0.05 measured
    assert e[2] @ e[3] > e[2] @ e[4]


@pytest.mark.slow
@pytest.mark.skipif(not data.shared_path("stsb").is_dir(), reason="../shared/data/stsb is not present")
def test_minilm_stsb_head():
    pytest.importorskip("scipy")
    from scipy.stats import spearmanr

    module = minilm.load()
    pairs, scores = data.stsb("test")
    pairs, scores = pairs[:100], scores[:100]
    a = minilm.embed(module, [p[0] for p in pairs])
    b = minilm.embed(module, [p[1] for p in pairs])
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert spearmanr(cosine, scores).statistic > 0.85  # measured 0.93 on these 100 (82.03 on all 1379)


def test_missing_optional_packages(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(UserError, match="pip install efficientnet-lite-pytorch"):
        zoo.get("efficientnet-lite0").load()
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps facenet-pytorch"):
        zoo.get("mtcnn-rnet").load()
