"""Pass contracts: idempotent, lint-clean, numerics preserved, provenance recorded, errors name the pass."""

import operator

import pytest
import torch
from torch import nn

import snnopt
import snnopt.nn as snn
from snnopt import kernels
from snnopt.frontend.tracer import trace
from snnopt.passes import (PassError, PassManager, VerificationError, binary_synapses, canonicalize_neurons, dce,
                           expose_aux, fuse_synapses, lower, reroll_time, verify)
from snnopt.passes.infra import PassResult

from .models import MLP, LoopConvNet, LoopMLP, grads_of, spikes

PIPELINES = {
    "dense": [canonicalize_neurons, reroll_time, binary_synapses(event=False), lower("dense"), dce],
    "sparse": [canonicalize_neurons, reroll_time, fuse_synapses, binary_synapses(), lower("sparse", 0.05), dce],
    "rate": [canonicalize_neurons, reroll_time, binary_synapses(), lower("rate"), dce],
}


def first_output(value):
    return value[0] if isinstance(value, tuple) else value


@pytest.mark.parametrize("mode", PIPELINES)
@pytest.mark.parametrize("cls", [LoopMLP, MLP, LoopConvNet])
def test_each_pass_idempotent_lint_clean_and_numerics_preserved(mode, cls):
    torch.manual_seed(0)
    model = cls()
    x = spikes((8, 2, 2, 12, 12) if cls is LoopConvNet else (8, 2, 12))
    expected = model(x)
    gm, _ = trace(model, (x,))
    for p in PIPELINES[mode]:
        gm = PassManager([p], verifier=verify)(gm, (x,))
        with torch.no_grad():
            got = first_output(gm(x))
        if mode == "dense":  # bit for bit
            assert torch.equal(got, expected), f"{p.__name__} changed the output"
        else:  # an event-driven Linear adds in another order: equal up to float rounding
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"{p.__name__} changed the output")
        again = p(gm)
        assert not again.modified, f"{p.__name__} is not idempotent"
        gm.graph.lint()


def scans(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is kernels.neuron_scan]


@pytest.mark.parametrize("cls", [LoopMLP, LoopConvNet])
def test_reroll_turns_a_t8_loop_into_one_scan_per_neuron(cls):
    torch.manual_seed(1)
    model = cls()
    x = spikes((8, 3, 2, 12, 12) if cls is LoopConvNet else (8, 3, 12))
    gm, _ = trace(model, (x,))
    pm = PassManager([canonicalize_neurons], verifier=verify)
    gm = pm(gm, (x,))
    assert len(scans(gm)) == 16 and all(n.meta["snn_cell"] for n in scans(gm))
    result = reroll_time(gm)
    assert result.modified and sum(n.kind == "rewritten" for n in result.notes) == 2
    gm = PassManager([dce], verifier=verify)(result.graph_module, (x,))
    rolled = scans(gm)
    assert len(rolled) == 2 and all(n.meta["rerolled"] == 8 and n.meta["origin"] == "reroll_time" for n in rolled)
    assert all(len(n.meta["from_node"]) == 8 for n in rolled)
    assert not any(n.op == "call_function" and n.target is torch.select for n in gm.graph.nodes)
    assert not any(n.op == "call_function" and n.target is torch.stack for n in gm.graph.nodes)
    ref_out = model(x)
    out = gm(x)
    assert torch.equal(out, ref_out)
    ref = grads_of(model, ref_out)
    got = grads_of(gm, out)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5 * float(ref[name].abs().max()))


def test_created_nodes_record_provenance():
    x = spikes((5, 2, 12))
    gm, _ = trace(LoopMLP(), (x,))
    gm = PassManager([canonicalize_neurons, reroll_time, fuse_synapses, binary_synapses(), lower("sparse"), expose_aux,
                      dce], verifier=verify)(gm, (x,))
    created = [n for n in gm.graph.nodes if n.op != "output" and n.meta["origin"] != "trace"]
    assert created
    for n in created:
        assert n.meta["from_node"], n.name
    region = next(n for n in gm.graph.nodes if n.target is kernels.spiking_synapse_sparse)
    assert region.meta["origin"] == "lower[sparse]" and region.meta["snn_synapse"] == "fc1"


def test_verifier_rejects_nodes_without_provenance_or_spec():
    x = spikes((5, 2, 12))
    gm, _ = trace(MLP(), (x,))
    gm = PassManager([canonicalize_neurons], verifier=verify)(gm, (x,))
    scan = scans(gm)[0]
    del scan.meta["snn"]
    with pytest.raises(VerificationError, match="NeuronSpec"):
        verify(gm)
    gm, _ = trace(MLP(), (x,))
    with pytest.raises(PassError, match="dce.*neither canonicalised") as info:
        PassManager([dce], verifier=verify)(gm, (x,))
    assert isinstance(info.value.__cause__, VerificationError)
    gm, _ = trace(MLP(), (x,))
    next(iter(gm.graph.nodes)).meta.pop("origin")
    with pytest.raises(VerificationError, match="provenance"):
        verify(gm)


def test_pass_errors_name_the_pass():
    def broken_pass(gm):
        node = next(n for n in gm.graph.nodes if n.op == "call_module")
        with gm.graph.inserting_after(node):
            bad = gm.graph.call_function(operator.add, (node, node))
        bad.meta["origin"] = "broken_pass"
        return PassResult(gm, True)

    x = spikes((5, 2, 12))
    gm, _ = trace(MLP(), (x,))
    with pytest.raises(PassError, match="broken_pass"):
        PassManager([canonicalize_neurons, broken_pass], verifier=verify)(gm, (x,))


def test_pass_manager_history_and_snapshots():
    x = spikes((4, 2, 12))
    gm, _ = trace(LoopMLP(), (x,))
    pm = PassManager([canonicalize_neurons, reroll_time, dce], verifier=verify, snapshots=True)
    pm(gm, (x,))
    assert [h["pass"] for h in pm.history] == ["canonicalize_neurons", "reroll_time", "dce"]
    reroll = pm.history[1]
    assert reroll["modified"] and reroll["nodes_after"] > 0
    before = {n.name for n in reroll["graph_before"].nodes}
    after = reroll["graph_after"]
    created = [n for n in after.nodes if n.name not in before]
    assert created and all(n.meta["origin"] == "reroll_time" for n in created)


class IndexedLoop(nn.Module):
    """A per-step loop that takes step ``t`` of ``x`` through ``index(x, t)`` (Norse tutorials write
    ``x[ts, :]``), over the first ``x.shape[0] - skip`` steps, stacking the steps along ``stack_dim``."""

    def __init__(self, index, n_in, skip=0, stack_dim=0):
        super().__init__()
        self.index, self.skip, self.stack_dim = index, skip, stack_dim
        self.fc1, self.lif1 = nn.Linear(n_in, 16), snn.LIFCell(0.85)
        self.fc2, self.lif2 = nn.Linear(16, 5), snn.LIFCell(0.75)

    def forward(self, x):
        v1 = v2 = None
        out = []
        for t in range(x.shape[0] - self.skip):
            s1, v1 = self.lif1(self.fc1(3 * self.index(x, t)), v1)
            s2, v2 = self.lif2(3 * self.fc2(s1), v2)
            out.append(s2)
        return torch.stack(out, self.stack_dim)


INDEX_FORMS = {
    "x[t]": (lambda x, t: x[t], 12),
    "x[t, :]": (lambda x, t: x[t, :], 12),
    "x[t, ...]": (lambda x, t: x[t, ...], 12),
    "x[t, :, 2:]": (lambda x, t: x[t, :, 2:], 10),
    "x[t, ..., 1]": (lambda x, t: x[t, ..., 1], 12),
    "x.select(0, t)": (lambda x, t: x.select(0, t), 12),
}


@pytest.mark.parametrize("skip", [0, 2])
@pytest.mark.parametrize("form", INDEX_FORMS)
def test_reroll_lifts_each_basic_step_index(form, skip):
    index, n_in = INDEX_FORMS[form]
    torch.manual_seed(2)
    model = IndexedLoop(index, n_in, skip)
    shape = (9, 3, 12, 2) if form == "x[t, ..., 1]" else (9, 3, 12)
    compiled = snnopt.compile(model, mode="dense", example_inputs=(spikes(shape),))
    assert not compiled.report.eager, str(compiled.report)
    assert [(n.shape[0], n.per_step) for n in compiled.report.neurons] == [(9 - skip, 0)] * 2
    for T, B in ((9, 3), (14, 2)):
        x = spikes((T, B, *shape[2:]))
        ref_out, out = model(x), compiled(x)
        assert torch.equal(out, ref_out)
        ref, got = grads_of(model, ref_out), grads_of(compiled, out)
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5 * float(ref[name].abs().max()))


@pytest.mark.parametrize("stack_dim", [1, 2, -1])
def test_reroll_lifts_a_stack_along_another_dim(stack_dim):
    torch.manual_seed(4)
    model = IndexedLoop(lambda x, t: x[t], 12, stack_dim=stack_dim)
    x = spikes((7, 3, 12))
    gm, _ = trace(model, (x,))
    gm = PassManager([canonicalize_neurons, reroll_time, dce], verifier=verify)(gm, (x,))
    assert len(scans(gm)) == 2
    assert not any(n.target in (torch.stack, torch.select) for n in gm.graph.nodes if n.op == "call_function")
    ref_out = model(x)
    out = first_output(gm(x))
    assert torch.equal(out, ref_out)
    ref, got = grads_of(model, ref_out), grads_of(gm, out)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5 * float(ref[name].abs().max()))


def test_reroll_names_a_step_index_it_cannot_lift():
    torch.manual_seed(3)
    model = IndexedLoop(lambda x, t: x[t, [0, 2, 1]], 12)  # an advanced index on the batch: kept per-step
    x = spikes((6, 3, 12))
    compiled = snnopt.compile(model, mode="dense", example_inputs=(x,))
    assert compiled.report.eager and "stays per-step" in str(compiled.report)
    assert torch.equal(compiled(x), model(x))
