"""Surrogate derivatives: each equals the derivative of its smooth primitive; names, aliases, errors."""

import math

import pytest
import torch

from snnopt import surrogate

PRIMITIVES = {
    "atan": lambda u, a: torch.atan(math.pi / 2 * a * u) / math.pi,
    "fast_sigmoid": lambda u, k: u / (1 + k * u.abs()),
    "sigmoid": lambda u, k: torch.sigmoid(k * u),
}


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
@pytest.mark.parametrize("param", [0.5, 3.0])
def test_grad_is_derivative_of_primitive(name, param):
    u = torch.linspace(-2, 2, 101, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(PRIMITIVES[name](u, param).sum(), u)
    torch.testing.assert_close(surrogate.Surrogate(name, param).grad(u.detach()), expected)


@pytest.mark.parametrize("name", ["atan", "sigmoid", "triangle", "rectangle"])
def test_unit_area(name):
    u = torch.linspace(-60, 60, 600001, dtype=torch.float64)
    area = torch.trapezoid(surrogate.get(name).grad(u), u)
    assert abs(float(area) - 1) < 1e-2


def test_spike_function_forward_and_backward():
    u = torch.tensor([-0.5, 0.0, 0.3], requires_grad=True)
    sg = surrogate.triangle(1.0)
    assert sg(u).tolist() == [0.0, 0.0, 1.0]
    assert sg(u, fire_ge=True).tolist() == [0.0, 1.0, 1.0]
    sg(u).sum().backward()
    torch.testing.assert_close(u.grad, torch.tensor([0.5, 1.0, 0.7]))


def test_names_and_errors():
    assert surrogate.get("superspike") == surrogate.fast_sigmoid()
    assert surrogate.get(surrogate.atan(3.0)).param == 3.0
    with pytest.raises(ValueError, match="unknown surrogate"):
        surrogate.get("nope")
    with pytest.raises(ValueError, match="positive"):
        surrogate.atan(-1.0)
    with pytest.raises(TypeError):
        surrogate.get(3)
