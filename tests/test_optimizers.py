"""The generic suite: every test here runs over every optimizer in the registry (tests/optim_db.py)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import aurora_opt
from aurora_opt import OPTIMIZERS, get_optimizer
from optim_db import COMMON_ERROR_INPUTS, OPTIM_DB, REDUCED
from reference import set_grads

NAMES = sorted(OPTIMIZERS)
VARIANTS = [(name, i) for name in NAMES for i in range(len(OPTIM_DB[name].variants))]

# parameter shapes of the generic suite: tall, wide, square, a stack of matrices, a conv kernel
SPECTRAL_SHAPES = [(24, 8), (8, 24), (12, 12), (2, 16, 6), (6, 3, 3, 3)]
ADAMW_SHAPES = [(24,), (30, 8)]  # a bias and an embedding table
#: step t's gradients are drawn from seed GRAD_SEED + t, apart from the parameters' seeds
GRAD_SEED = 100


def make_params(dtype=torch.float32, seed: int = 0) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    g = torch.Generator().manual_seed(seed)
    spectral = [nn.Parameter(torch.randn(*s, generator=g).to(dtype)) for s in SPECTRAL_SHAPES]
    adamw = [nn.Parameter(torch.randn(*s, generator=g).to(dtype)) for s in ADAMW_SHAPES]
    return spectral, adamw


def make_optimizer(name: str, spectral, adamw, **kwargs):
    groups = [{"params": spectral}]
    if adamw:
        groups.append({"params": adamw, "algorithm": "adamw", "lr": 1e-2})
    return get_optimizer(name)(groups, **{**OPTIM_DB[name].fast, **kwargs})


def run(name: str, steps: int, *, dtype=torch.float32, **kwargs):
    spectral, adamw = make_params(dtype)
    opt = make_optimizer(name, spectral, adamw, **kwargs)
    for t in range(steps):
        set_grads(spectral + adamw, GRAD_SEED + t)
        opt.step()
    return spectral + adamw, opt


def test_registry_has_an_entry_per_optimizer():
    assert set(OPTIM_DB) == set(OPTIMIZERS)
    assert {cls.__name__ for cls in OPTIMIZERS.values()} <= set(aurora_opt.__all__)


@pytest.mark.parametrize("name,variant", VARIANTS)
def test_deterministic_and_finite(name, variant):
    kwargs = OPTIM_DB[name].variants[variant]
    first, _ = run(name, 3, **kwargs)
    second, _ = run(name, 3, **kwargs)
    initial, _ = make_params()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
        assert torch.isfinite(a).all()
    for p, p0 in zip(first, initial):
        assert not torch.equal(p, p0), "every spectral parameter must move"


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_resume_is_bit_identical(name):
    spectral, adamw = make_params()
    opt = make_optimizer(name, spectral, adamw)
    for t in range(2):
        set_grads(spectral + adamw, GRAD_SEED + t)
        opt.step()
    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in spectral + adamw], "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    spectral2, adamw2 = make_params(seed=7)  # different values, overwritten from the checkpoint
    with torch.no_grad():
        for p, saved in zip(spectral2 + adamw2, checkpoint["params"]):
            p.copy_(saved)
    opt2 = make_optimizer(name, spectral2, adamw2)
    opt2.load_state_dict(checkpoint["optim"])
    for t in range(2, 4):
        set_grads(spectral + adamw, GRAD_SEED + t)
        set_grads(spectral2 + adamw2, GRAD_SEED + t)
        opt.step()
        opt2.step()
    for a, b in zip(spectral + adamw, spectral2 + adamw2):
        assert torch.equal(a, b)


#: options added after the first checkpoints were written: a checkpoint without them loads with the
#: optimizer's own value
LATER_OPTIONS = {"polar_reduction": "qr", "gram_matmul_dtype": torch.float32}


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_from_before_later_options_loads(name):
    spectral, adamw = make_params()
    old = make_optimizer(name, spectral, adamw)
    later = {key: value for key, value in LATER_OPTIONS.items() if key in old.defaults}
    state = old.state_dict()
    for group in state["param_groups"]:
        for key in later:
            group.pop(key, None)
    rejected = [kwargs for kwargs, _ in OPTIM_DB[name].error_inputs]
    supported = {key: value for key, value in later.items() if {key: value} not in rejected}
    new = make_optimizer(name, spectral, adamw, **supported)
    new.load_state_dict(state)
    spectral_group = new.param_groups[0]
    for key in later:
        assert spectral_group[key] == new.defaults[key]
    assert all(key not in new.param_groups[1] for key in later)  # the AdamW group gets none of them


@pytest.mark.parametrize("name", NAMES)
def test_params_without_grad_are_untouched(name):
    spectral, adamw = make_params()
    opt = make_optimizer(name, spectral, adamw)
    frozen = [spectral[1], adamw[0]]
    before = [p.detach().clone() for p in frozen]
    for t in range(2):
        set_grads(spectral + adamw, GRAD_SEED + t)
        for p in frozen:
            p.grad = None
        opt.step()
    for p, b in zip(frozen, before):
        assert torch.equal(p, b)
        assert p not in opt.state


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kwargs,bad_name", COMMON_ERROR_INPUTS, ids=[f"{k}" for k, _ in COMMON_ERROR_INPUTS])
def test_bad_common_hyperparameters_raise(name, kwargs, bad_name):
    spectral, adamw = make_params()
    with pytest.raises(ValueError, match=bad_name):
        make_optimizer(name, spectral, adamw, **kwargs)


@pytest.mark.parametrize(
    "name,kwargs,bad_name",
    [(name, kw, bad) for name in NAMES for kw, bad in OPTIM_DB[name].error_inputs],
)
def test_bad_algorithm_hyperparameters_raise(name, kwargs, bad_name):
    spectral, adamw = make_params()
    with pytest.raises(ValueError, match=bad_name):
        make_optimizer(name, spectral, adamw, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_vectors_in_a_spectral_group_are_rejected_with_advice(name):
    with pytest.raises(ValueError, match=r"'bias'.*1-D.*adamw"):
        get_optimizer(name)([("weight", nn.Parameter(torch.ones(4, 4))), ("bias", nn.Parameter(torch.ones(4)))])


@pytest.mark.parametrize("name", NAMES)
def test_group_lrs_scale_the_update(name):
    # same parameter and gradient in two groups with lr and 3·lr; momentum 0 and no decay, so the
    # second update is 3× the first. float64 parameters: only the rounding of W − update (~1e-16) differs
    g = torch.Generator().manual_seed(3)
    W = torch.randn(20, 6, generator=g, dtype=torch.float64)
    G = torch.randn(20, 6, generator=g, dtype=torch.float64)
    a, b = nn.Parameter(W.clone()), nn.Parameter(W.clone())
    opt = get_optimizer(name)(
        [{"params": [a], "lr": 0.01}, {"params": [b], "lr": 0.03}],
        momentum=0.0,
        weight_decay=0.0,
        **OPTIM_DB[name].fast,
    )
    a.grad, b.grad = G.clone(), G.clone()
    opt.step()
    torch.testing.assert_close(b - W, 3 * (a - W), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_hybrid_adamw_group_matches_torch_adamw(name):
    # float64 and the same formula as torch.optim.AdamW; only the order of operations differs (1e-12)
    g = torch.Generator().manual_seed(4)
    E = torch.randn(30, 8, generator=g, dtype=torch.float64)
    ours, theirs = nn.Parameter(E.clone()), nn.Parameter(E.clone())
    hidden = nn.Parameter(torch.randn(12, 4, generator=g, dtype=torch.float64))
    opt = get_optimizer(name)(
        [
            {"params": [hidden]},
            {"params": [ours], "algorithm": "adamw", "lr": 1e-2, "betas": (0.8, 0.9), "weight_decay": 0.1},
        ],
        **OPTIM_DB[name].fast,
    )
    ref = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.1)
    for _ in range(4):
        grad = torch.randn(30, 8, generator=g, dtype=torch.float64)
        ours.grad, theirs.grad, hidden.grad = grad.clone(), grad.clone(), torch.ones_like(hidden)
        opt.step()
        ref.step()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", [name for name in NAMES if REDUCED in OPTIM_DB[name].variants])
def test_qr_reduction_gives_the_direct_result(name, monkeypatch):
    # Q·polar(R) is the same odd polynomial of the same singular values as polar(X) (tests/test_polar.py).
    # One step from zero weights at lr 1 without weight decay moves each weight by s(m, n)·U, the
    # direction itself: reduced and direct agree to fp32 rounding through the iterations (measured at
    # most 5.8e-6, largest entries 0.4 to 0.5 per matrix), hence 2e-5
    # (Aurora's reduction reuses its last Gram step as CholeskyQR's first pass: both reach the second)
    import aurora_opt.optim.aurora
    import aurora_opt.polar

    reduced_shapes = []
    after_first_pass = aurora_opt.polar.polar_after_first_pass

    def counted(Q1, R1, polar):
        reduced_shapes.append(tuple(Q1.shape))
        return after_first_pass(Q1, R1, polar)

    for module in (aurora_opt.polar, aurora_opt.optim.aurora):
        monkeypatch.setattr(module, "polar_after_first_pass", counted)
    moved = {}
    for reduction in (None, "qr"):
        spectral = [nn.Parameter(torch.zeros(s)) for s in SPECTRAL_SHAPES]
        optimizer = make_optimizer(name, spectral, [], lr=1.0, weight_decay=0.0, polar_reduction=reduction)
        set_grads(spectral, GRAD_SEED)
        optimizer.step()
        moved[reduction] = spectral
    for a, b in zip(moved[None], moved["qr"]):
        torch.testing.assert_close(b, a, rtol=0, atol=2e-5)
    # 24×8, 8×24 (as 24×8), the 2×16×6 stack and the 6×27 conv kernel (as 27×6): aspect ≥ 2
    assert {(24, 8), (16, 6), (27, 6)} <= {shape[-2:] for shape in reduced_shapes}


@pytest.mark.parametrize("name", NAMES)
def test_batched_and_conv_weights_match_their_matrices(name):
    # a 3-D parameter is a stack of independent matrices; a conv kernel is one (out, in·kh·kw) matrix.
    # Batched and separate polar calls round differently in fp32, hence 1e-5.
    g = torch.Generator().manual_seed(5)
    stack, conv = torch.randn(2, 16, 6, generator=g), torch.randn(6, 3, 3, 3, generator=g)
    G_stack, G_conv = torch.randn(2, 16, 6, generator=g), torch.randn(6, 3, 3, 3, generator=g)
    p_stack, p_conv = nn.Parameter(stack.clone()), nn.Parameter(conv.clone())
    p_mats = [nn.Parameter(stack[0].clone()), nn.Parameter(stack[1].clone()), nn.Parameter(conv.reshape(6, 27).clone())]
    fast = OPTIM_DB[name].fast
    opt_a = get_optimizer(name)([p_stack, p_conv], **fast)
    opt_b = get_optimizer(name)(p_mats, **fast)
    for _ in range(2):
        p_stack.grad, p_conv.grad = G_stack.clone(), G_conv.clone()
        for p, grad in zip(p_mats, [G_stack[0], G_stack[1], G_conv.reshape(6, 27)]):
            p.grad = grad.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(p_stack[0], p_mats[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(p_stack[1], p_mats[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(p_conv.reshape(6, 27), p_mats[2], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_parameter_dtypes(name, dtype):
    params, opt = run(name, 2, dtype=dtype)
    for p in params:
        assert p.dtype == dtype and torch.isfinite(p).all()
    assert all(s["momentum_buffer"].dtype == dtype for s in opt.state.values() if "momentum_buffer" in s)


@pytest.mark.parametrize("name", NAMES)
def test_zero_rows_and_zero_gradients_give_finite_updates(name):
    W = nn.Parameter(torch.randn(16, 4))
    opt = get_optimizer(name)([W], **OPTIM_DB[name].fast)
    G = torch.randn(16, 4)
    G[3:7] = 0  # starved neurons have exactly-zero gradient rows
    for grad in (G, torch.zeros(16, 4)):
        W.grad = grad
        opt.step()
        assert torch.isfinite(W).all()


class TinyClassifier(nn.Module):
    """Embedding → tall MLP input projection → output head, with tied weights and a norm."""

    def __init__(self, vocab: int = 16, width: int = 16, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        h = self.norm(self.embed(tokens))
        return self.head(h + self.down(torch.relu(self.up(h))))


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_on_a_small_model(name):
    torch.manual_seed(0)
    model = TinyClassifier()
    tokens = torch.randint(0, 16, (256,))
    targets = (tokens * 7 + 3) % 16  # a fixed permutation to learn
    opt = get_optimizer(name)(aurora_opt.param_groups(model, adamw_lr=3e-2), lr=0.02, **OPTIM_DB[name].fast)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(tokens), targets)
        loss.backward()
        return loss

    first = closure().item()
    for _ in range(40):
        last = opt.step(closure).item()
    assert math.isfinite(last)
    assert last < 0.5 * first, f"{name}: loss {first:.3f} → {last:.3f}"


# ---------------------------------------------------------------------- torch.optim's contract


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", ["momentun", "betas", "capturable"])
def test_unknown_keyword_arguments_raise_type_error_naming_them(name, bad):
    spectral, _ = make_params()
    with pytest.raises(TypeError, match=bad):
        get_optimizer(name)(spectral, **{bad: 0.5})


@pytest.mark.parametrize("name", NAMES)
def test_maximize_equals_minimizing_the_negated_gradient(name):
    spectral, adamw = make_params()
    mirror_spectral, mirror_adamw = make_params()
    ascending = make_optimizer(name, spectral, adamw, maximize=True)
    descending = make_optimizer(name, mirror_spectral, mirror_adamw)
    for t in range(3):
        set_grads(spectral + adamw, GRAD_SEED + t)
        set_grads(mirror_spectral + mirror_adamw, GRAD_SEED + t)
        for p in mirror_spectral + mirror_adamw:
            p.grad.neg_()
        ascending.step()
        descending.step()
    for a, b in zip(spectral + adamw, mirror_spectral + mirror_adamw):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_step_on_the_meta_device(name):
    spectral = [nn.Parameter(torch.empty(s, device="meta")) for s in SPECTRAL_SHAPES]
    adamw = [nn.Parameter(torch.empty(s, device="meta")) for s in ADAMW_SHAPES]
    opt = make_optimizer(name, spectral, adamw)
    for p in spectral + adamw:
        p.grad = torch.empty_like(p)
    opt.step()
    assert all(t.device.type == "meta" for state in opt.state.values() for t in state.values() if torch.is_tensor(t))


@pytest.mark.parametrize("name", NAMES)
def test_tensor_lr_gives_the_float_lr_result(name):
    # a 0-d tensor lr (what a compiled step with a scheduler needs) takes a different multiply than a
    # Python float; fp32 rounding of that one product is the only difference: 1e-6 relative
    floats, _ = run(name, 3, lr=0.02, adamw_lr=1e-2)
    tensors, opt = run(name, 3, lr=torch.tensor(0.02), adamw_lr=torch.tensor(1e-2))
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)
    for a, b in zip(floats, tensors):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad", [torch.tensor([0.02, 0.01]), torch.tensor(-0.02), torch.tensor(2)])
def test_bad_tensor_lrs_raise(bad):
    spectral, _ = make_params()
    with pytest.raises(ValueError, match="lr"):
        aurora_opt.Muon(spectral, lr=bad)
