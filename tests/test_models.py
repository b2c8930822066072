"""Tests for research.models: registry, shapes, exact parameter counts, errors, pickling."""

from __future__ import annotations

import io
import re

import pytest
import torch
from torch import nn

import research.models as models
from research.models import (
    available_models,
    build_model,
    count_parameters,
    register_model,
    validate_model_args,
)

# Natural input shape (without batch dim) for every registered model.
NATURAL_SHAPES: dict[str, tuple[int, ...]] = {
    "mlp": (40,),
    "mnist1d_mlp": (40,),
    "mnist1d_cnn": (40,),
    "mnist_cnn_teacher": (1, 28, 28),
    "mnist_cnn_student": (1, 28, 28),
    "hinton_teacher": (1, 28, 28),
    "hinton_student": (1, 28, 28),
    "cifar_resnet": (3, 32, 32),
    "resnet8x4": (3, 32, 32),
    "resnet32x4": (3, 32, 32),
}

# (name, num_classes, exact parameter count)
PARAM_COUNTS = [
    # 40*100+100 + 100*100+100 + 100*10+10
    ("mnist1d_mlp", 10, 15_210),
    ("mlp", 10, 15_210),  # default widths [100, 100] on (40,) is the same network
    # conv1 1*25*5+25=150, conv2 25*25*3+25=1900, conv3 1900, fc 25*5*10+10=1260
    ("mnist1d_cnn", 10, 5_210),
    # conv1 1*10*25+10=260, conv2 10*20*25+20=5020, fc 320*10+10=3210
    ("mnist_cnn_teacher", 10, 8_490),
    # conv1 1*5*25+5=130, conv2 5*10*25+10=1260, fc 160*10+10=1610
    ("mnist_cnn_student", 10, 3_000),
    # 784*1200+1200 + 1200*1200+1200 + 1200*10+10
    ("hinton_teacher", 10, 2_395_210),
    # 784*800+800 + 800*800+800 + 800*10+10
    ("hinton_student", 10, 1_276_810),
    # stem 3*32*9+64=928; block 32->64 (1x1 proj) 57,728; 64->128 230,144; 128->256 919,040;
    # fc 256*100+100=25,700  => 1,233,540 (CRD paper: ~1.23M)
    ("resnet8x4", 100, 1_233_540),
    ("resnet8x4", 10, 1_210_410),
    ("resnet32x4", 100, 7_433_860),  # CRD paper: ~7.43M
    ("resnet32x4", 10, 7_410_730),
    ("cifar_resnet", 100, 1_233_540),  # defaults (depth 8, widths [32,64,128,256]) == resnet8x4
]


def test_registry_lists_all_models_sorted() -> None:
    names = available_models()
    assert names == sorted(names)
    # Sequence models take token ids and a source vocabulary: tested in tests/test_g2p.py.
    assert set(names) == set(NATURAL_SHAPES) | {"transformer_seq2seq"}


@pytest.mark.parametrize("name", sorted(NATURAL_SHAPES))
def test_forward_shape(name: str) -> None:
    torch.manual_seed(0)
    shape = NATURAL_SHAPES[name]
    model = build_model(name, input_shape=shape, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "num_classes", "expected"), PARAM_COUNTS)
def test_exact_parameter_counts(name: str, num_classes: int, expected: int) -> None:
    model = build_model(name, input_shape=NATURAL_SHAPES[name], num_classes=num_classes)
    assert count_parameters(model) == expected


def test_size_kwargs_change_models() -> None:
    m = build_model("mlp", input_shape=(40,), num_classes=10, widths=[8], dropout=0.1)
    assert count_parameters(m) == 40 * 8 + 8 + 8 * 10 + 10
    assert any(isinstance(x, nn.Dropout) for x in m.modules())
    c = build_model("mnist1d_cnn", input_shape=(40,), num_classes=10, channels=4)
    assert count_parameters(c) == (4 * 5 + 4) + 2 * (4 * 4 * 3 + 4) + (4 * 5 * 10 + 10)
    r = build_model("cifar_resnet", input_shape=(3, 32, 32), num_classes=10, depth=14, widths=[8, 8, 16, 32])
    assert len(r.layers) == 3 * 2  # n = (14 - 2) / 6 = 2 blocks per stage
    # List input_shape (as from a YAML config) and [B, 1, 40] inputs are fine.
    m1 = build_model("mnist1d_cnn", input_shape=[1, 40], num_classes=3).eval()
    assert m1(torch.randn(2, 1, 40)).shape == (2, 3)


def test_dropout_layers() -> None:
    teacher = build_model("mnist_cnn_teacher", input_shape=(1, 28, 28), num_classes=10)
    assert any(isinstance(x, nn.Dropout2d) for x in teacher.modules())
    no_drop = build_model("mnist_cnn_teacher", input_shape=(1, 28, 28), num_classes=10, dropout=0.0)
    assert not any(isinstance(x, nn.Dropout2d) for x in no_drop.modules())
    student = build_model("hinton_student", input_shape=(784,), num_classes=10)
    assert not any(isinstance(x, nn.Dropout) for x in student.modules())
    hinton_t = build_model("hinton_teacher", input_shape=(784,), num_classes=10)
    drops = sorted(x.p for x in hinton_t.modules() if isinstance(x, nn.Dropout))
    assert drops == [0.2, 0.5, 0.5]  # input + two hidden layers


def test_resnet_has_batchnorm_buffers() -> None:
    model = build_model("resnet8x4", input_shape=(3, 32, 32), num_classes=10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(name.endswith("running_mean") for name, _ in model.named_buffers())


def test_unknown_model() -> None:
    for fn in (lambda: build_model("foo", input_shape=(40,), num_classes=10),
               lambda: validate_model_args("foo", {})):
        with pytest.raises(ValueError) as exc:
            fn()
        msg = str(exc.value)
        assert "'foo'" in msg and "\n" not in msg
        assert "available: " + ", ".join(available_models()) in msg


def test_unknown_kwarg() -> None:
    expected = "model 'mlp' got unexpected argument 'widht'; accepted: widths, dropout"
    with pytest.raises(ValueError, match=expected):
        build_model("mlp", input_shape=(40,), num_classes=10, widht=[5])
    with pytest.raises(ValueError, match=expected):
        validate_model_args("mlp", {"widht": [5]})
    with pytest.raises(ValueError, match="accepted: \\(none\\)"):
        validate_model_args("resnet8x4", {"depth": 8})
    validate_model_args("mlp", {"widths": [5], "dropout": 0.1})  # fine
    validate_model_args("resnet8x4", None)


@pytest.mark.parametrize(
    ("name", "kwargs", "fragment"),
    [
        ("mlp", {"widths": []}, "widths"),
        ("mlp", {"widths": [10, 0]}, "widths"),
        ("mlp", {"widths": "100"}, "widths"),
        ("mlp", {"dropout": 1.0}, "dropout"),
        ("mnist1d_cnn", {"channels": 0}, "channels"),
        ("cifar_resnet", {"depth": 10}, "6n+2"),
        ("cifar_resnet", {"widths": [32, 64, 128]}, "widths"),
    ],
)
def test_invalid_kwarg_values(name: str, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        build_model(name, input_shape=NATURAL_SHAPES[name], num_classes=10, **kwargs)


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("mnist_cnn_teacher", (40,), "(1, 28, 28)"),
        ("mnist_cnn_student", (3, 32, 32), "(1, 28, 28)"),
        ("mnist1d_cnn", (1, 28, 28), "(40,)"),
        ("resnet8x4", (40,), "(3, 32, 32)"),
    ],
)
def test_wrong_input_shape(name: str, shape: tuple[int, ...], expected: str) -> None:
    with pytest.raises(ValueError) as exc:
        build_model(name, input_shape=shape, num_classes=10)
    assert expected in str(exc.value) and repr(name) in str(exc.value)


def test_bad_shape_and_classes() -> None:
    with pytest.raises(ValueError, match="input_shape"):
        build_model("mlp", input_shape=(40, 0), num_classes=10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", input_shape=(40,), num_classes=0)


@pytest.mark.parametrize("name", sorted(NATURAL_SHAPES))
def test_pickle_roundtrip(name: str) -> None:
    torch.manual_seed(0)
    shape = NATURAL_SHAPES[name]
    model = build_model(name, input_shape=shape, num_classes=5).eval()
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_register_custom_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # Work on a copy of the registry so the global one is untouched.
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))

    @register_model("tiny")
    def tiny(input_shape: tuple[int, ...], num_classes: int, *, hidden: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(1), nn.Linear(input_shape[0], hidden), nn.Linear(hidden, num_classes))

    assert "tiny" in available_models()
    assert build_model("tiny", input_shape=(4,), num_classes=2, hidden=3)(torch.randn(2, 4)).shape == (2, 2)
    with pytest.raises(ValueError, match="missing required argument"):
        validate_model_args("tiny", {})
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny")(tiny)
