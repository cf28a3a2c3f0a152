"""Bad gradients: NaN/inf (raise or skip, nothing changed), sparse, complex, zero rows, all zeros."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import aurora_opt
from aurora_opt import NonFiniteGradError
from reference import set_grads

OPTIMIZER_NAMES = sorted(aurora_opt.OPTIMIZERS)
BAD_VALUES = (float("nan"), float("inf"), float("-inf"))


def make_params(seed: int = 0) -> dict[str, torch.nn.Parameter]:
    """A tall, a wide and a stacked (3-D) matrix for the spectral rule; a bias and an embedding for AdamW."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"mlp.up": (48, 12), "mlp.down": (12, 48), "experts": (2, 8, 8), "mlp.bias": (48,), "embed": (10, 12)}
    return {name: torch.nn.Parameter(torch.randn(shape, generator=generator)) for name, shape in shapes.items()}


def make_optimizer(name: str, params: dict[str, torch.nn.Parameter], **options) -> aurora_opt.SpectralOptimizer:
    """Two spectral groups and one AdamW group, all with named parameters."""
    groups = [
        {"params": [("mlp.up", params["mlp.up"]), ("mlp.down", params["mlp.down"])]},
        {"params": [("experts", params["experts"])], "lr": 0.01},
        {"params": [("mlp.bias", params["mlp.bias"]), ("embed", params["embed"])], "algorithm": "adamw"},
    ]
    return aurora_opt.OPTIMIZERS[name](groups, **options)


def bits(t: torch.Tensor) -> bytes:
    """The exact bytes of a tensor (distinguishes −0.0 from 0.0 and NaN payloads)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def snapshot(params: dict[str, torch.nn.Parameter], optimizer: aurora_opt.SpectralOptimizer) -> dict:
    """Bytes of every parameter and every state tensor, plus the non-tensor state and the skip count."""
    state = {}
    for index, (p, entries) in enumerate(optimizer.state.items()):
        for key, value in entries.items():
            state[(index, id(p), key)] = bits(value) if torch.is_tensor(value) else copy.deepcopy(value)
    return {
        "params": {name: bits(p) for name, p in params.items()},
        "state": state,
        "skipped_steps": optimizer.skipped_steps,
    }


def poison(params: dict[str, torch.nn.Parameter], name: str, value: float) -> None:
    """One bad entry in the middle of the named parameter's gradient."""
    flat = params[name].grad.view(-1)
    flat[flat.numel() // 2] = value


# ------------------------------------------------------------------------------------ raise policy
@pytest.mark.parametrize(
    ("bad_param", "value"),
    list(zip(["mlp.up", "experts", "embed"], BAD_VALUES)),
    ids=("nan_first_group", "inf_last_spectral_group", "-inf_adamw_group"),
)
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_raise_changes_nothing(name: str, bad_param: str, value: float) -> None:
    params = make_params()
    optimizer = make_optimizer(name, params)
    set_grads(params.values(), seed=0)
    optimizer.step()  # state exists now (momentum, NorMuon's variance, AdamW moments)
    set_grads(params.values(), seed=1)
    poison(params, bad_param, value)
    before = snapshot(params, optimizer)
    with pytest.raises(
        NonFiniteGradError,
        match=rf"parameter '{bad_param}' of shape {tuple(params[bad_param].shape)}".replace("(", r"\(").replace(
            ")", r"\)"
        ),
    ):
        optimizer.step()
    assert snapshot(params, optimizer) == before


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_raise_on_first_step_creates_no_state(name: str) -> None:
    params = make_params()
    optimizer = make_optimizer(name, params)
    set_grads(params.values(), seed=0)
    poison(params, "mlp.bias", float("nan"))
    before = snapshot(params, optimizer)
    with pytest.raises(NonFiniteGradError, match=r"parameter 'mlp.bias' of shape \(48,\)"):
        optimizer.step()
    assert snapshot(params, optimizer) == before
    assert len(optimizer.state) == 0


def test_raise_names_unnamed_parameter_by_position() -> None:
    W = torch.nn.Parameter(torch.randn(6, 3))
    V = torch.nn.Parameter(torch.randn(3, 3))
    optimizer = aurora_opt.Aurora([W, V])
    W.grad = torch.randn(6, 3)
    V.grad = torch.full((3, 3), float("inf"))
    with pytest.raises(NonFiniteGradError, match=r"parameter 1 of its group of shape \(3, 3\)"):
        optimizer.step()


# ------------------------------------------------------------------------------------ skip policy
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_skip_changes_nothing_counts_and_persists(name: str) -> None:
    params = make_params()
    optimizer = make_optimizer(name, params, on_nonfinite_grad="skip")
    set_grads(params.values(), seed=0)
    optimizer.step()
    for skipped, bad_param in enumerate(("embed", "experts", "mlp.down"), start=1):
        set_grads(params.values(), seed=10 + skipped)
        poison(params, bad_param, float("nan") if skipped % 2 else float("inf"))
        before = snapshot(params, optimizer)
        optimizer.step()
        after = snapshot(params, optimizer)
        assert after["params"] == before["params"] and after["state"] == before["state"]
        assert optimizer.skipped_steps == skipped

    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    restored = make_optimizer(name, make_params(), on_nonfinite_grad="skip")
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer))
    assert restored.skipped_steps == 3


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_skip_on_first_step_then_train_as_if_it_never_happened(name: str) -> None:
    """A run that skips bad steps ends bit-identical to a run that never saw them."""
    clean_params, skip_params = make_params(), make_params()
    clean = make_optimizer(name, clean_params)
    skipping = make_optimizer(name, skip_params, on_nonfinite_grad="skip")

    set_grads(skip_params.values(), seed=99)
    poison(skip_params, "mlp.up", float("nan"))
    skipping.step()  # before any state exists
    assert len(skipping.state) == 0 and skipping.skipped_steps == 1

    for step in range(3):
        set_grads(clean_params.values(), seed=step)
        clean.step()
        set_grads(skip_params.values(), seed=step)
        skipping.step()
        set_grads(skip_params.values(), seed=50 + step)
        poison(skip_params, "embed", float("-inf"))
        skipping.step()
    assert skipping.skipped_steps == 4
    for key in clean_params:
        assert bits(clean_params[key]) == bits(skip_params[key]), key
        assert torch.isfinite(skip_params[key]).all()


def test_skip_returns_the_closure_loss() -> None:
    W = torch.nn.Parameter(torch.randn(8, 4))
    optimizer = aurora_opt.Muon([W], on_nonfinite_grad="skip")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = W.sum() * float("nan")
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert torch.isnan(loss) and optimizer.skipped_steps == 1


def test_invalid_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="on_nonfinite_grad"):
        aurora_opt.Muon([torch.nn.Parameter(torch.randn(4, 4))], on_nonfinite_grad="ignore")


# ------------------------------------------------------------------------------------ sparse and complex
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_sparse_gradient_is_a_clear_error(name: str) -> None:
    params = make_params()
    optimizer = make_optimizer(name, params)
    set_grads(params.values(), seed=0)
    params["embed"].grad = params["embed"].grad.to_sparse()
    before = snapshot(params, optimizer)
    with pytest.raises(RuntimeError, match=r"parameter 'embed' has a sparse gradient; \w+ needs dense gradients"):
        optimizer.step()
    assert snapshot(params, optimizer) == before


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_complex_gradient_is_a_clear_error(name: str) -> None:
    params = make_params()
    optimizer = make_optimizer(name, params)
    set_grads(params.values(), seed=0)
    params["mlp.down"].grad_dtype = None  # torch itself refuses a complex grad on a real tensor otherwise
    params["mlp.down"].grad = torch.randn(12, 48, dtype=torch.complex64)
    before = snapshot(params, optimizer)
    with pytest.raises(RuntimeError, match=r"parameter 'mlp.down' has a complex gradient; \w+ needs real gradients"):
        optimizer.step()
    assert snapshot(params, optimizer) == before


@pytest.mark.parametrize("algorithm", [None, "adamw"])
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_complex_parameter_is_a_clear_error(name: str, algorithm: str | None) -> None:
    group = {"params": [("z", torch.nn.Parameter(torch.randn(6, 3, dtype=torch.complex64)))]}
    if algorithm:
        group["algorithm"] = algorithm
    with pytest.raises(ValueError, match=r"parameter 'z' is complex; \w+ supports real parameters"):
        aurora_opt.OPTIMIZERS[name]([group])


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_integer_parameter_is_a_clear_error(name: str) -> None:
    with pytest.raises(ValueError, match=r"has dtype torch.int64; expected a floating dtype"):
        aurora_opt.OPTIMIZERS[name]([torch.zeros(4, 4, dtype=torch.int64)])


# ------------------------------------------------------------------------------------ zeros
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_zero_gradient_rows_and_all_zero_gradients_give_finite_updates(name: str) -> None:
    params = make_params()
    optimizer = make_optimizer(name, params)
    dead_rows = torch.zeros(48, dtype=torch.bool)
    dead_rows[::3] = True
    for step in range(3):
        set_grads(params.values(), seed=step)
        params["mlp.up"].grad[dead_rows] = 0.0  # dead neurons: zero rows of a tall matrix
        params["mlp.down"].grad[:, dead_rows] = 0.0  # their columns in the wide one
        params["experts"].grad.zero_()  # an all-zero gradient
        before = {key: p.detach().clone() for key, p in params.items()}
        optimizer.step()
        for key, p in params.items():
            assert torch.isfinite(p).all(), (key, step)
        # a row whose momentum is exactly zero gets no spectral update, only the weight decay
        decay = 1 - optimizer.param_groups[0]["lr"] * optimizer.param_groups[0]["weight_decay"]
        assert torch.equal(params["mlp.up"].detach()[dead_rows], before["mlp.up"][dead_rows] * decay)
        assert torch.equal(params["mlp.down"].detach()[:, dead_rows], before["mlp.down"][:, dead_rows] * decay)
    # all-zero gradients from the start: momentum stays zero, only weight decay may act
    W = torch.nn.Parameter(torch.randn(32, 8))
    zero_optimizer = aurora_opt.OPTIMIZERS[name]([W])
    start = W.detach().clone()
    for _ in range(3):
        W.grad = torch.zeros_like(W)
        zero_optimizer.step()
    decay = (1 - zero_optimizer.param_groups[0]["lr"] * zero_optimizer.param_groups[0]["weight_decay"]) ** 3
    torch.testing.assert_close(W.detach(), start * decay, rtol=1e-6, atol=0.0)
