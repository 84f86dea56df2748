import pytest

from medk2n.errors import ExportError
from medk2n.export.spec import BatchSpec, GraphSpec, parse_batch


@pytest.mark.parametrize(
    "text, expected",
    [("1", BatchSpec(1, 1, 1)), ("8", BatchSpec(8, 8, 8)), ("1:4:16", BatchSpec(1, 4, 16)), ("2:2:2", BatchSpec(2, 2, 2))],
)
def test_parse_batch(text, expected):
    assert parse_batch(text) == expected


@pytest.mark.parametrize("text", ["0", "a", "1:2", "4:2:8", "1:8:4", "1:2:3:4", ""])
def test_parse_batch_rejects(text):
    with pytest.raises(ExportError, match="--batch"):
        parse_batch(text)


def test_fixed_batch_shapes_are_numbers_and_the_target_axis_is_symbolic():
    spec = GraphSpec(k=2, n=4, size=64, batch=parse_batch("3"))
    shapes = {t.name: (t.dtype, t.shape) for t in spec.inputs() + spec.outputs()}
    assert shapes == {
        "x": ("float32", [3, 2, 64, 64]),
        "src": ("int64", [3, 2]),
        "tgt": ("int64", [3, "targets"]),
        "avail": ("float32", [3, 2]),
        "images": ("float32", [3, "targets", 64, 64]),
        "scale": ("float32", [3, "targets", 64, 64]),
    }
    assert spec.shapes(3, 1)["images"] == [3, 1, 64, 64]  # a concrete target count, e.g. for a profile


def test_dynamic_batch_is_symbolic_and_one_target_stays_fixed():
    spec = GraphSpec(k=1, n=2, size=32, batch=parse_batch("1:2:8"))
    assert all(t.shape[0] == "batch" for t in spec.inputs() + spec.outputs())
    assert spec.inputs()[0].shape == ["batch", 1, 32, 32]
    single = GraphSpec(k=2, n=1, size=32, batch=parse_batch("1:2:8"))  # torch.export pins size-1 axes
    assert not single.dynamic_targets and single.inputs()[2].shape == ["batch", 1]


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(k=0, n=1), "--k"), (dict(size=48), "--size"), (dict(size=0), "--size"), (dict(opset=16), "--opset")],
)
def test_graph_spec_rejects(kwargs, message):
    fields = dict(k=2, n=4, size=64, batch=parse_batch("1"))
    fields.update(kwargs)
    with pytest.raises(ExportError, match=message):
        GraphSpec(**fields)
