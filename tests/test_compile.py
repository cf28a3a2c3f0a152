"""The step as GPUs run it: one compiled graph, and no host synchronization.

Every registered optimizer, default configuration, AdamW side included (and Aurora with
``polar_reduction="qr"``):

- ``torch.compile(optimizer.step, fullgraph=True)`` traces without a graph break, gives the eager
  result, and compiles once: not again on later steps, per parameter, or when an lr scheduler
  changes a tensor lr in place;
- under :func:`aurora_opt.optim.sync_free` (what CUDA runs) the step reads no device value on the
  host with ``on_nonfinite_grad="skip"``, and exactly one per step with ``"raise"`` (the check that
  raises before anything changes).

The compile tests use the ``aot_eager`` backend: Dynamo and AOTAutograd trace exactly as for
inductor (graph breaks, guards, recompiles are theirs), without spending CI time on code generation.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

import aurora_opt
from aurora_opt import OPTIMIZERS, get_optimizer
from aurora_opt.optim import sync_free
from models import Conv1D
from optim_db import OPTIM_DB, REDUCED

NAMES = sorted(OPTIMIZERS)
#: each optimizer's defaults (on the CPU: fp32 polar factors), and Aurora with CUDA's bf16 polar factor
#: (so bf16 Gram products) and the polar reduction (of D·M after its Gram steps; the other optimizers
#: call the same reduced orthogonalizer)
CONFIGURATIONS = [(name, {}) for name in NAMES] + [("aurora", {**REDUCED, "polar_dtype": torch.bfloat16})]
IDS = [name + ("-qr-bf16" if kwargs else "") for name, kwargs in CONFIGURATIONS]
#: the compiled graph unrolls every loop, so Riemannian Aurora's is traced with fewer iterations of
#: each than its ``fast`` test configuration (still two ascent steps, so the second one sees what the
#: first carried): 9 s instead of 14.5 s here
COMPILE_LOOPS = {"riemannian_aurora": {"ascent_steps": 2, "cg_steps": 2, "balance_steps": 2}}


def tiny_model(seed: int = 0) -> nn.Module:
    """Embedding, tall, wide and square matrices, a norm and biases, a head, and a GPT-2 Conv1D
    (weight stored (in, out)): both sides of the optimizer and both weight layouts."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Embedding(16, 8),
        nn.Linear(8, 24),
        nn.LayerNorm(24),
        nn.Linear(24, 8, bias=False),
        nn.Linear(8, 8, bias=False),
        nn.Linear(8, 16),
        Conv1D(24, 8),
    )


def make(name: str, model: nn.Module, **kwargs):
    # tensor lrs on both sides: a scheduler then changes them in place instead of replacing a constant
    groups = aurora_opt.param_groups(model, head_names=("5",))
    return get_optimizer(name)(
        groups, lr=torch.tensor(0.02), adamw_lr=torch.tensor(3e-3), **{**OPTIM_DB[name].fast, **kwargs}
    )


def set_grads(model: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


# the scheduler cannot see calls of the compiled step and warns that it was stepped first
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("name,kwargs", CONFIGURATIONS, ids=IDS)
def test_compiled_step_is_one_graph_and_matches_eager(name, kwargs):
    torch._dynamo.reset()
    counters.clear()
    eager_model, compiled_model = tiny_model(), tiny_model()
    kwargs = {**COMPILE_LOOPS.get(name, {}), **kwargs}
    eager, compiled = make(name, eager_model, **kwargs), make(name, compiled_model, **kwargs)
    compiled_step = torch.compile(compiled.step, fullgraph=True, backend="aot_eager")
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1 / (1 + t)) for o in (eager, compiled)]
    with sync_free():  # the eager reference runs the same fixed-count loops as the compiled step
        for t in range(3):
            set_grads(eager_model, t)
            set_grads(compiled_model, t)
            eager.step()
            compiled_step()
            for scheduler in schedulers:
                scheduler.step()
    assert counters["stats"]["unique_graphs"] == 1, "recompiled across steps, parameters or lr values"
    assert not counters["graph_break"]
    # the same ops in the same order; fp32 reassociation inside AOTAutograd's decompositions only
    for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert float(compiled.param_groups[0]["lr"]) == pytest.approx(0.02 / 4)  # changed in place


class HostReads(TorchDispatchMode):
    """Counts ops that read device values on the host: ``.item()``/``bool()`` (aten._local_scalar_dense)
    and ops whose output shape depends on the data (``nonzero``, ``masked_select``, ...).

    A dispatch mode sees every aten op, which no public API does; a CUDA stream sync check
    (torch.cuda.set_sync_debug_mode) would need a GPU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tags = getattr(func, "tags", ())
        if torch.Tag.data_dependent_output in tags or torch.Tag.dynamic_output_shape in tags:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name,kwargs", CONFIGURATIONS, ids=IDS)
@pytest.mark.parametrize("policy,reads_per_step", [("skip", 0), ("raise", 1)])
def test_no_host_synchronization_in_the_cuda_configuration(name, kwargs, policy, reads_per_step):
    model = tiny_model()
    optimizer = make(name, model, on_nonfinite_grad=policy, **kwargs)
    with sync_free():
        for t in range(2):
            set_grads(model, t)
            with HostReads() as mode:
                optimizer.step()
            assert len(mode.reads) == reads_per_step, mode.reads


@pytest.mark.parametrize("name", NAMES)
def test_skipped_step_without_host_sync_changes_nothing(name):
    model, reference = tiny_model(), tiny_model()
    optimizer, reference_optimizer = make(name, model, on_nonfinite_grad="skip"), make(name, reference)
    with sync_free():
        for t in range(3):
            set_grads(model, t)
            set_grads(reference, t)
            optimizer.step()
            reference_optimizer.step()
            set_grads(model, 100 + t)
            next(model.parameters()).grad[0, 0] = float("nan")
            optimizer.step()  # masked on device: parameters and state keep their values
    assert optimizer.skipped_steps == 3
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), reference.parameters()):
        for key, value in optimizer.state[p].items():
            assert torch.equal(value, reference_optimizer.state[q][key]), key
