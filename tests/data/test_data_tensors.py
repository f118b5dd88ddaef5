import pytest
import torch

from darkknowledge.data import TensorDataset
from darkknowledge.errors import DKError


def _ds(**overrides):
    fields = dict(
        images=torch.zeros(3, 2, 2, dtype=torch.uint8),
        labels=torch.tensor([0, 1, 2]),
        index=torch.arange(3),
        num_classes=3,
        name="toy/train",
    )
    fields.update(overrides)
    return TensorDataset(**fields)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"images": torch.zeros(3, 2, 2)}, "images must be a uint8"),
        ({"images": torch.zeros(3, 4, dtype=torch.uint8)}, "images must be a uint8"),
        ({"labels": torch.tensor([0, 1, 2], dtype=torch.int32)}, "labels must be an int64"),
        ({"labels": torch.tensor([0, 1])}, r"shape \(3,\)"),
        (
            {"labels": torch.tensor([0, 3, 1])},
            r"label 3 at position 1 \(source index 1\) is outside \[0, 3\)",
        ),
        ({"labels": torch.tensor([0, 1, -1])}, r"label -1 at position 2"),
        ({"index": torch.arange(2)}, "index must be an int64"),
        ({"index": torch.arange(3, dtype=torch.int32)}, "index must be an int64"),
        ({"num_classes": 0}, "num_classes=0"),
    ],
)
def test_validation_names_the_problem(overrides, match):
    with pytest.raises(DKError, match=match):
        _ds(**overrides)


def test_bad_label_error_names_source_index_and_dataset():
    with pytest.raises(DKError, match=r"'toy/train': label 7 at position 0 \(source index 42\)"):
        _ds(labels=torch.tensor([7, 0, 0]), index=torch.tensor([42, 43, 44]))


def test_subset_keeps_labels_and_index_aligned():
    ds = _ds(
        images=torch.arange(12, dtype=torch.uint8).reshape(3, 2, 2),
        index=torch.tensor([10, 11, 12]),
    )
    sub = ds.subset(torch.tensor([2, 0]))
    assert len(sub) == 2
    assert sub.labels.tolist() == [2, 0]
    assert sub.index.tolist() == [12, 10]
    assert torch.equal(sub.images[0], ds.images[2])
    assert sub.name == ds.name and sub.num_classes == ds.num_classes


@pytest.mark.parametrize(
    "positions",
    [
        torch.tensor([0, 3]),
        torch.tensor([-1]),
        torch.tensor([True, False, True]),
        torch.tensor([0.0]),
    ],
)
def test_subset_rejects_bad_positions(positions):
    with pytest.raises(DKError):
        _ds().subset(positions)


def test_features_scale_and_shape():
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8).expand(3, 2, 2).contiguous()
    ds = _ds(images=images)
    f = ds.features()
    assert f.dtype == torch.float32 and f.shape == (3, 4)
    assert torch.equal(f[0], torch.tensor([0.0, 1.0, 0.2, 0.4]))
    assert torch.equal(ds.features(torch.tensor([1])), f[1:2])
    jittered = torch.full((2, 2, 2), 255, dtype=torch.uint8)
    assert torch.equal(ds.features(images=jittered), torch.ones(2, 4))
    with pytest.raises(DKError, match="both"):
        ds.features(torch.tensor([0]), jittered)
    with pytest.raises(DKError, match="uint8"):
        ds.features(images=torch.ones(2, 3, 3, dtype=torch.uint8))


def test_fingerprint_tracks_content_not_device():
    ds = _ds()
    fp = ds.fingerprint()
    assert len(fp) == 64 and fp == _ds().fingerprint()
    assert ds.to("cpu").fingerprint() == fp
    assert _ds(name="toy/test").fingerprint() != fp
    assert _ds(labels=torch.tensor([0, 1, 1])).fingerprint() != fp
    assert _ds(labels=None).fingerprint() != fp
    assert _ds(index=torch.tensor([0, 1, 3])).fingerprint() != fp
    assert _ds(images=torch.ones(3, 2, 2, dtype=torch.uint8)).fingerprint() != fp
    assert ds.subset(torch.tensor([0, 1])).fingerprint() != fp


def test_class_counts_and_unlabelled():
    assert _ds(labels=torch.tensor([2, 2, 0])).class_counts() == [1, 0, 2]
    with pytest.raises(DKError, match="unlabelled"):
        _ds(labels=None).class_counts()


def test_repr_is_short():
    assert (
        repr(_ds())
        == "TensorDataset(name='toy/train', n=3, image=(2, 2), num_classes=3, labelled, device=cpu)"
    )
