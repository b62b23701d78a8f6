"""Property-based fuzzing of every command's numeric flags: any value argparse lets through
(negative, zero, huge, NaN, infinite) is accepted or refused with a TorchVaeError, never
another exception, and never a value that cannot be written to config.json."""

import dataclasses
import json
import math
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_vae import ModelConfig, TorchVaeError
from torch_vae.cli.commands import COMMANDS
from torch_vae.cli.flags import _kind, defaults, model_config, model_options
from torch_vae.training import TrainConfig

INTS = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 1, 2**31, 2**63]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
# train's options can also come from a --config JSON file, where any number may stand for any
# field (json reads NaN and Infinity too); the other commands' come from argparse's int/float
FROM_JSON = set(COMMANDS["train"].options)


def numeric_fields(cls) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("flag", True)
            and _kind(hints[f.name])[0] in (int, float)]  # fmt: skip


CLASSES = sorted({cls for c in COMMANDS.values() for cls in c.options}, key=lambda c: c.__name__)


def build(cls, values):
    """What the command makes of the values: the model options become the family's config."""
    if cls is model_options():
        return model_config(values, 1)
    return cls(**values)


@pytest.mark.parametrize("cls", [c for c in CLASSES if numeric_fields(c)], ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_numeric_flags_are_accepted_or_refused_in_one_line(cls, data):
    name = data.draw(st.sampled_from(numeric_fields(cls)))
    kind = _kind(typing.get_type_hints(cls)[name])[0]
    if cls in FROM_JSON:
        value = data.draw(st.one_of(INTS, FLOATS))
    else:
        value = data.draw(INTS if kind is int else st.one_of(FLOATS, INTS))
    values = {k: v for k, v in defaults((cls,)).items()}
    values[name] = value
    try:
        made = build(cls, values)
    except TorchVaeError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    if isinstance(made, ModelConfig | TrainConfig):  # config.json must be valid JSON
        json.loads(json.dumps(made.to_dict(), allow_nan=False))
    else:
        got = getattr(made, name)
        assert not (isinstance(got, float) and not math.isfinite(got)), (name, got)


FLOAT_FIELDS = [
    (cls, name)
    for cls in CLASSES
    for name in numeric_fields(cls)
    if _kind(typing.get_type_hints(cls)[name])[0] is float
]


@pytest.mark.parametrize("cls,name", FLOAT_FIELDS, ids=lambda x: getattr(x, "__name__", x))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_flag_refuses_non_finite_values(cls, name, value):
    """The cases the random search above may miss: each float flag, each non-finite value."""
    values = {**defaults((cls,)), name: value}
    with pytest.raises(TorchVaeError):
        build(cls, values)
