"""snnTorch, SpikingJelly and Norse models, written as in those libraries' tutorials,
compiled in dense mode: outputs equal and every parameter gradient within rtol 1e-4 of
autograd through the original model, on fresh random inputs.  Most library models are
compared in float64, where a rerolled per-step loop's batched Linear and SpikingJelly's
``ParametricLIFNode`` (which multiplies by ``sigmoid(w)`` where snnopt scales by its decay)
agree to rounding and no spike sits within rounding of the threshold; the float32 tests
show the neurons bit for bit where the libraries' order of operations is reproduced
(Norse's Euler form, SpikingJelly's divided form)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnopt
from snnopt.data import make_loaders

snn = pytest.importorskip("snntorch")
from snntorch import surrogate as snn_sg  # noqa: E402
from snntorch import utils as snn_utils  # noqa: E402

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
from spikingjelly.activation_based import functional as sj_functional  # noqa: E402
from spikingjelly.activation_based import layer as sj_layer  # noqa: E402
from spikingjelly.activation_based import surrogate as sj_sg  # noqa: E402

norse = pytest.importorskip("norse.torch")


def spikes(shape, p=0.3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < p).to(dtype)


def check(model, x, rtol=1e-4):
    compiled = snnopt.compile(model, example_inputs=(x,))
    assert not compiled.report.eager, str(compiled.report)
    ref, got = model(x), compiled(x)
    ref, got = (ref if isinstance(ref, tuple) else (ref,)), (got if isinstance(got, tuple) else (got,))
    for a, b in zip(ref, got):
        assert torch.equal(a, b) if a.dtype == torch.float32 else torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(a.shape, generator=g, dtype=a.dtype) for a in ref]
    params = [p for p in model.parameters() if p.requires_grad]
    gr = torch.autograd.grad(sum((a * w).sum() for a, w in zip(ref, weights)), params)
    gc = torch.autograd.grad(sum((a * w).sum() for a, w in zip(got, weights)), params)
    for a, b in zip(gc, gr):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()) + 1e-7)
    assert any(float(b.abs().max()) > 0 for b in gr), "the test drives no gradient"
    return compiled


# --------------------------------------------------------------------------- snnTorch


class SnnTorchMLP(nn.Module):
    """snnTorch tutorial 5: explicit membrane, a loop over steps, recorded spikes and membranes."""

    def __init__(self, spike_grad, reset, synaptic=False, learn=True, reset_delay=True):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(20, 32), nn.Linear(32, 5)
        with torch.no_grad():
            self.fc1.weight.mul_(3)
        self.synaptic = synaptic
        kw = dict(spike_grad=spike_grad, reset_mechanism=reset, reset_delay=reset_delay)
        self.lif1 = snn.Synaptic(alpha=0.7, beta=0.9, **kw) if synaptic \
            else snn.Leaky(beta=0.9, learn_threshold=learn, **kw)
        self.lif2 = snn.Leaky(beta=0.8, learn_beta=learn, **kw)

    def forward(self, x):
        if self.synaptic:
            syn1, mem1 = self.lif1.init_synaptic()
        else:
            mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk_rec, mem_rec = [], []
        for step in range(x.shape[0]):
            cur1 = self.fc1(x[step])
            if self.synaptic:
                spk1, syn1, mem1 = self.lif1(cur1, syn1, mem1)
            else:
                spk1, mem1 = self.lif1(cur1, mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk_rec.append(spk2)
            mem_rec.append(mem2)
        return torch.stack(spk_rec), torch.stack(mem_rec)


class SnnTorchConv(nn.Module):
    """snnTorch tutorial 7: ``init_hidden`` neurons in ``nn.Sequential``, ``utils.reset`` each pass."""

    def __init__(self, spike_grad, reset):
        super().__init__()
        kw = dict(beta=0.5, spike_grad=spike_grad, init_hidden=True, reset_mechanism=reset)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), snn.Leaky(**kw),
                                 nn.Conv2d(4, 8, 3), nn.MaxPool2d(2), snn.Leaky(**kw), nn.Flatten(),
                                 nn.Linear(8 * 2 * 2, 5), snn.Leaky(**kw, output=True))
        with torch.no_grad():
            self.net[0].weight.mul_(4)
            self.net[3].weight.mul_(4)

    def forward(self, x):
        snn_utils.reset(self.net)
        spk_rec, mem_rec = [], []
        for step in range(x.shape[0]):
            spk, mem = self.net(x[step])
            spk_rec.append(spk)
            mem_rec.append(mem)
        return torch.stack(spk_rec), torch.stack(mem_rec)


SNN_SURROGATES = [snn_sg.atan(), snn_sg.fast_sigmoid(slope=10)]


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("sg", range(len(SNN_SURROGATES)))
@pytest.mark.parametrize("synaptic", [False, True])
@pytest.mark.parametrize("reset_delay", [True, False])
def test_snntorch_mlp(reset, sg, synaptic, reset_delay):
    torch.manual_seed(sg)
    check(SnnTorchMLP(SNN_SURROGATES[sg], reset, synaptic, reset_delay=reset_delay), spikes((12, 4, 20)))


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("sg", range(len(SNN_SURROGATES)))
def test_snntorch_conv(reset, sg):
    torch.manual_seed(10 + sg)
    model = SnnTorchConv(SNN_SURROGATES[sg], reset)
    compiled = check(model, spikes((8, 3, 1, 14, 14)))
    assert sum(n.detail.endswith("one multi-step scan") for n in compiled.report.rewritten) == 3


def test_snntorch_hidden_state_is_reset_between_batches_as_in_the_original():
    """Without a reset the state carries over between calls, with one it starts at zero:
    the compiled model does both exactly like snnTorch, and leaves the same state behind."""
    torch.manual_seed(3)
    kw = dict(beta=0.9, spike_grad=snn_sg.atan(), init_hidden=True)

    class Carry(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(20, 16), snn.Leaky(**kw), nn.Linear(16, 4), snn.Leaky(**kw))

        def forward(self, x):
            return torch.stack([self.net(x[t]) for t in range(x.shape[0])])

    model = Carry()
    with torch.no_grad():
        model.net[0].weight.mul_(3)
    twin = Carry()
    twin.load_state_dict(model.state_dict())
    compiled = snnopt.compile(twin, example_inputs=(spikes((6, 2, 20)),))
    for seed, reset in ((1, True), (2, False), (3, False), (4, True)):
        x = spikes((6, 2, 20), seed=seed)
        if reset:
            snn_utils.reset(model.net)
            snn_utils.reset(twin.net)
        with torch.no_grad():
            assert torch.equal(model(x), compiled(x))
        torch.testing.assert_close(model.net[1].mem, twin.net[1].mem)  # batched Linear rounds differently


# --------------------------------------------------------------------------- SpikingJelly


class SJMLP(nn.Module):
    """SpikingJelly multi-step MLP (``step_mode="m"``, input ``[T, B, N]``)."""

    def __init__(self, sg, v_reset, decay_input=True, plif=False):
        super().__init__()
        node = (lambda: sj_neuron.ParametricLIFNode(init_tau=2.0, decay_input=decay_input, v_reset=v_reset,
                                                    surrogate_function=sg, step_mode="m")) if plif else \
            (lambda: sj_neuron.LIFNode(tau=2.0, decay_input=decay_input, v_reset=v_reset, surrogate_function=sg,
                                       step_mode="m"))
        self.net = nn.Sequential(sj_layer.Linear(20, 32, step_mode="m"), node(), sj_layer.Linear(32, 5, step_mode="m"),
                                 sj_neuron.IFNode(v_reset=v_reset, surrogate_function=sg, step_mode="m"))
        with torch.no_grad():
            self.net[0].weight.mul_(4)

    def forward(self, x):
        sj_functional.reset_net(self.net)
        return self.net(x)


class SJConv(nn.Module):
    """SpikingJelly single-step conv net looped over time (``step_mode="s"``)."""

    def __init__(self, sg, v_reset):
        super().__init__()
        self.net = nn.Sequential(sj_layer.Conv2d(1, 4, 3), sj_layer.AvgPool2d(2),
                                 sj_neuron.LIFNode(tau=2.0, v_reset=v_reset, surrogate_function=sg),
                                 sj_layer.Flatten(), sj_layer.Linear(4 * 6 * 6, 5),
                                 sj_neuron.LIFNode(tau=2.0, v_reset=v_reset, surrogate_function=sg,
                                                   detach_reset=True))
        with torch.no_grad():
            self.net[0].weight.mul_(4)

    def forward(self, x):
        sj_functional.reset_net(self.net)
        return torch.stack([self.net(x[t]) for t in range(x.shape[0])])


class SJConvMultiStep(nn.Module):
    """SpikingJelly's multi-step conv tutorial: ``layer.*`` wrappers (or ``SeqToANNContainer``)
    with BatchNorm, max-pool and dropout, switched to ``step_mode="m"`` by ``set_step_mode``."""

    def __init__(self, sg, v_reset, container=False):
        super().__init__()
        conv = [sj_layer.SeqToANNContainer(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))] if container else \
            [sj_layer.Conv2d(1, 4, 3), sj_layer.BatchNorm2d(4)]
        self.net = nn.Sequential(*conv, sj_neuron.LIFNode(tau=2.0, v_reset=v_reset, surrogate_function=sg),
                                 sj_layer.MaxPool2d(2), sj_layer.Flatten(), sj_layer.Dropout(0.3),
                                 sj_layer.Linear(4 * 6 * 6, 5),
                                 sj_neuron.LIFNode(tau=2.0, v_reset=v_reset, surrogate_function=sg))
        sj_functional.set_step_mode(self.net, "m")
        with torch.no_grad():
            self.net[-2].weight.mul_(6)

    def forward(self, x):
        sj_functional.reset_net(self.net)
        return self.net(x)


SJ_SURROGATES = [sj_sg.Sigmoid(alpha=4.0), sj_sg.ATan(alpha=2.0)]


@pytest.mark.parametrize("v_reset", [None, 0.0])
@pytest.mark.parametrize("sg", range(len(SJ_SURROGATES)))
@pytest.mark.parametrize("variant", ["lif", "lif_no_decay_input", "plif"])
def test_spikingjelly_mlp(v_reset, sg, variant):
    torch.manual_seed(sg)
    model = SJMLP(SJ_SURROGATES[sg], v_reset, decay_input=variant != "lif_no_decay_input",
                  plif=variant == "plif").double()
    check(model, spikes((10, 3, 20), dtype=torch.float64))


@pytest.mark.parametrize("v_reset", [None, 0.0])
@pytest.mark.parametrize("sg", range(len(SJ_SURROGATES)))
def test_spikingjelly_conv(v_reset, sg):
    torch.manual_seed(20 + sg)
    compiled = check(SJConv(SJ_SURROGATES[sg], v_reset).double(), spikes((8, 3, 1, 14, 14), dtype=torch.float64))
    assert sum(n.detail.endswith("one multi-step scan") for n in compiled.report.rewritten) == 2
    assert any("avg_pool" in n.detail for n in compiled.report.rewritten)  # layer.AvgPool2d: snnopt's kernel


class SJPoolMultiStep(nn.Module):
    """``layer.AvgPool2d`` in ``step_mode="m"``, over ``[T, B, C, H, W]``."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(sj_layer.Conv2d(1, 4, 3), sj_layer.AvgPool2d(2), sj_neuron.LIFNode(tau=2.0),
                                 sj_layer.Flatten(), sj_layer.Linear(4 * 6 * 6, 5), sj_neuron.LIFNode(tau=2.0))
        with torch.no_grad():
            self.net[0].weight.mul_(4)
        sj_functional.set_step_mode(self.net, "m")

    def forward(self, x):
        sj_functional.reset_net(self.net)
        return self.net(x)


def test_spikingjelly_multistep_average_pooling_runs_on_the_avg_pool_op():
    torch.manual_seed(4)
    compiled = check(SJPoolMultiStep(), spikes((8, 3, 1, 14, 14)))
    assert sum("avg_pool" in n.detail for n in compiled.report.rewritten) == 1


class SJFloat32(nn.Module):
    """A multi-step LIFNode with a tau whose reciprocal is inexact in binary, then an IFNode."""

    def __init__(self, decay_input, v_reset):
        super().__init__()
        self.net = nn.Sequential(sj_layer.Linear(20, 48), sj_neuron.LIFNode(tau=1.7, decay_input=decay_input,
                                                                            v_reset=v_reset),
                                 sj_layer.Linear(48, 6), sj_neuron.IFNode(v_reset=v_reset))
        sj_functional.set_step_mode(self.net, "m")
        with torch.no_grad():
            self.net[0].weight.mul_(3)

    def forward(self, x):
        sj_functional.reset_net(self.net)
        return self.net(x)


@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("v_reset", [None, -0.2])
def test_spikingjelly_float32_forward_is_bit_for_bit(decay_input, v_reset):
    """``LIFNode`` compiles in SpikingJelly's divided form (``integration="tau"``) and ``IFNode``
    adds as it does: in float32 dense mode's spikes and the membranes it leaves behind equal
    SpikingJelly's, its gradients are autograd's through the original; sparse and rate mode fire
    the same spikes (their event-driven synapses sum in spike order, so a membrane behind one
    agrees to rounding)."""
    torch.manual_seed(12)
    model, x = SJFloat32(decay_input, v_reset), spikes((40, 3, 20))
    compiled = check(model, x)
    assert "integration=tau" in str(compiled.report)
    ref = model(x)
    v_ref = [model.net[i].v.clone() for i in (1, 3)]
    assert ref.any()
    for mode in ("dense", "sparse", "rate"):
        other = compiled if mode == "dense" else snnopt.compile(model, mode=mode, example_inputs=(x,))
        assert torch.equal(other(x), ref), mode
        for i, v in zip((1, 3), v_ref):
            if mode == "dense":
                assert torch.equal(model.net[i].v, v)
            else:
                torch.testing.assert_close(model.net[i].v, v, rtol=1e-6, atol=1e-6)


def test_spikingjelly_matches_under_bfloat16_autocast():
    """Under autocast SpikingJelly's Linear hands its neurons bfloat16 currents and they keep a
    bfloat16 membrane; the compiled divided form rounds as they do."""
    torch.manual_seed(13)
    model, x = SJFloat32(True, None), spikes((30, 3, 20))
    compiled = snnopt.compile(model, example_inputs=(x,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(x)
        v_ref = model.net[1].v.clone()
        out = compiled(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref) and torch.equal(model.net[1].v, v_ref)
    assert v_ref.dtype == torch.bfloat16 and ref.any()


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_spikingjelly_state_is_reset_between_batches_as_in_the_original(step_mode):
    """Without ``reset_net`` the membranes carry over between calls, with it they restart:
    the compiled model does both exactly like SpikingJelly and leaves the same ``v`` behind."""
    torch.manual_seed(9)

    def make():
        net = nn.Sequential(sj_layer.Linear(20, 16), sj_neuron.LIFNode(tau=2.0), sj_layer.Linear(16, 4),
                            sj_neuron.IFNode(v_reset=None))
        sj_functional.set_step_mode(net, step_mode)
        return net.double()

    class Carry(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = make()

        def forward(self, x):
            return self.net(x) if step_mode == "m" else torch.stack([self.net(x[t]) for t in range(x.shape[0])])

    model, twin = Carry(), Carry()
    with torch.no_grad():
        model.net[0].weight.mul_(4)
    twin.load_state_dict(model.state_dict())
    compiled = snnopt.compile(twin, example_inputs=(spikes((6, 2, 20), dtype=torch.float64),))
    for seed, reset in ((1, True), (2, False), (3, False), (4, True)):
        x = spikes((6, 2, 20), seed=seed, dtype=torch.float64)
        if reset:
            sj_functional.reset_net(model.net)
            sj_functional.reset_net(twin.net)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-10, atol=1e-12)
        for i in (1, 3):
            torch.testing.assert_close(twin.net[i].v, model.net[i].v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("v_reset", [None, 0.0])
@pytest.mark.parametrize("container", [False, True])
def test_spikingjelly_multistep_conv_in_training_mode(v_reset, container):
    """Training mode: dropout draws the same mask (same seed), BatchNorm normalises with the
    same batch statistics and updates its running statistics identically."""
    torch.manual_seed(30)
    model = SJConvMultiStep(SJ_SURROGATES[1], v_reset, container).double()
    twin = SJConvMultiStep(SJ_SURROGATES[1], v_reset, container).double()
    twin.load_state_dict(model.state_dict())
    x = spikes((8, 3, 1, 14, 14), dtype=torch.float64)
    compiled = snnopt.compile(twin, example_inputs=(x,))
    assert not compiled.report.eager, str(compiled.report)
    torch.manual_seed(7)
    ref = model(x)
    torch.manual_seed(7)
    got = compiled(x)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert 0 < float(ref.detach().mean()) < 1
    w = torch.randn(ref.shape, dtype=ref.dtype)
    gr = torch.autograd.grad((ref * w).sum(), list(model.parameters()))
    gc = torch.autograd.grad((got * w).sum(), list(twin.parameters()))
    for (name, p), a, b in zip(model.named_parameters(), gc, gr):
        scale = float(b.abs().max()) if "0.bias" not in name and "0.0.bias" not in name else 1.0  # bias before BN: 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * scale + 1e-12)
    for a, b in zip(twin.buffers(), model.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- Norse


class NorseMLP(nn.Module):
    """Norse tutorial style: cells with explicit state tuples in a loop over ``x[ts, :]``, LI readout."""

    def __init__(self, box=False, v_th=0.3):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(20, 32), nn.Linear(32, 5)
        p = norse.LIFBoxParameters(v_th=torch.as_tensor(v_th)) if box else norse.LIFParameters(
            v_th=torch.as_tensor(v_th), tau_syn_inv=torch.as_tensor(300.0))
        self.lif = norse.LIFBoxCell(p) if box else norse.LIFCell(p)
        self.out = norse.LICell()
        with torch.no_grad():
            self.fc1.weight.mul_(20)

    def forward(self, x):
        s1 = s2 = None
        outs = []
        for ts in range(x.shape[0]):
            z, s1 = self.lif(self.fc1(x[ts, :]), s1)
            v, s2 = self.out(self.fc2(z), s2)
            outs.append(v)
        return torch.stack(outs)


class NorseConv(nn.Module):
    """Norse multi-step modules on ``[T, B, ...]`` (``SequentialState`` style, unrolled)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.lif = norse.LIF(norse.LIFParameters(v_th=torch.as_tensor(0.2)))
        self.fc = nn.Linear(4 * 12 * 12, 5)
        self.iaf = norse.IAF(norse.IAFParameters(v_th=torch.as_tensor(0.5)))
        with torch.no_grad():
            self.conv.weight.mul_(30)
            self.fc.weight.mul_(10)

    def forward(self, x):
        T, B = x.shape[:2]
        c = self.conv(x.flatten(0, 1)).unflatten(0, (T, B))
        z, _ = self.lif(c)
        out, _ = self.iaf(self.fc(z.flatten(2)))
        return out


@pytest.mark.parametrize("box", [False, True])
def test_norse_mlp(box):
    torch.manual_seed(4)
    check(NorseMLP(box).double(), spikes((15, 3, 20), dtype=torch.float64))


def test_norse_conv():
    torch.manual_seed(5)
    check(NorseConv().double(), spikes((10, 2, 1, 14, 14), dtype=torch.float64))


@pytest.mark.parametrize("model", ["mlp", "mlp_box", "conv"])
def test_norse_float32_forward_is_bit_for_bit(model):
    """In float32 too: the Euler form rounds as Norse does (outputs, LI membranes included, equal)."""
    torch.manual_seed(6)
    if model == "conv":
        check(NorseConv(), spikes((10, 2, 1, 14, 14)))
    else:
        check(NorseMLP(box=model == "mlp_box"), spikes((40, 3, 20)))


def test_norse_box_cells_match_under_bfloat16_autocast():
    """Under autocast ``LIFBoxCell`` and ``LICell`` run in bfloat16 and the compiled Euler form
    rounds as they do (``LIFCell`` turns its state to float32 instead, see the README)."""
    torch.manual_seed(7)
    model, x = NorseMLP(box=True), spikes((30, 3, 20))
    compiled = snnopt.compile(model, example_inputs=(x,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, out = model(x), compiled(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out.float(), ref.float())


def test_norse_trained_parameter_stays_eager_with_its_gradient():
    torch.manual_seed(6)
    v_th = nn.Parameter(torch.tensor(0.3))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = nn.Linear(12, 9), norse.LIF(norse.LIFParameters(v_th=v_th))
            self.v_th = v_th  # registered, so an optimizer trains it

        def forward(self, x):
            return self.lif(20 * self.fc(x))[0]

    model, x = Net(), spikes((8, 3, 12))
    compiled = snnopt.compile(model, example_inputs=(x,))
    assert any("nn.Parameter" in note.detail for note in compiled.report.eager)
    out = compiled(x)
    assert torch.equal(out, model(x))
    out.sum().backward()
    assert model.v_th.grad is not None and model.v_th.grad != 0


# --------------------------------------------------------------------------- all


class Image(nn.Module):
    """Feeds the embedded data set's 196 channels to a conv net as 1x14x14 frames."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.unflatten(2, (1, 14, 14)))


def snntorch_loss(out, y):  # tutorial 5: cross-entropy on the output membrane
    return F.cross_entropy(out[1].mean(0), y)


@pytest.mark.parametrize("container", [False, True])
def test_spikingjelly_multistep_batch_norm_in_rate_mode(container):
    """``layer.BatchNorm2d`` in ``step_mode="m"`` normalises ``[T, B, C, H, W]`` over its
    channels (dim 2): the rate pass takes the spike pass's statistics per channel, so at
    T = 1 the gradients equal BPTT's (batch size = channel count, where statistics over the
    wrong dim would still have the right size)."""
    torch.manual_seed(31)
    model = SJConvMultiStep(SJ_SURROGATES[1], None, container).double()
    twin = SJConvMultiStep(SJ_SURROGATES[1], None, container).double()
    twin.load_state_dict(model.state_dict())
    for m in (*model.modules(), *twin.modules()):
        if isinstance(m, sj_layer.Dropout):
            m.p = 0.0  # (the rate pass would draw other masks)
    x = spikes((1, 4, 1, 14, 14), dtype=torch.float64)
    compiled = snnopt.compile(twin, mode="rate", example_inputs=(x,))
    assert compiled.report.fallback is None, str(compiled.report)
    ref, got = model(x), compiled(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    w = torch.randn(ref.shape, dtype=ref.dtype)
    gr = torch.autograd.grad((ref * w).sum(), list(model.parameters()))
    gc = torch.autograd.grad((got * w).sum(), list(twin.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), gc, gr):
        scale = 1.0 if name.endswith("0.bias") else float(b.abs().max())  # bias before BN: 0
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9 * scale + 1e-12, msg=name)


@pytest.mark.parametrize("mode", ["dense", "rate"])
def test_compiling_leaves_spikingjelly_dropout_untouched(mode):
    """Tracing runs SpikingJelly's ``layer.Dropout``, which keeps its mask on the module; the
    mask it would keep is undone, so the model still runs and compiles again."""
    torch.manual_seed(0)
    net = nn.Sequential(sj_layer.Linear(8, 6), sj_neuron.LIFNode(), sj_layer.Dropout(0.5), sj_layer.Linear(6, 2))
    sj_functional.set_step_mode(net, "m")
    x = spikes((4, 2, 8), p=0.6)
    snnopt.compile(net, mode=mode, example_inputs=(x,))
    assert net[2].mask is None
    assert isinstance(net(x), torch.Tensor)
    sj_functional.reset_net(net)
    snnopt.compile(net, mode="sparse", example_inputs=(x,))(x).sum().backward()
    assert net[0].weight.grad is not None


def spikingjelly_loss(out, y):  # SpikingJelly tutorials: MSE between firing rate and one-hot label
    return F.mse_loss(out.mean(0), F.one_hot(y, 5).to(out.dtype))


def norse_loss(out, y):  # Norse tutorials: cross-entropy on the maximum over time
    return F.cross_entropy(out.max(0).values, y)


# name: (model, input channels, weight gain that makes the untrained net fire on this data, loss)
TRAINED = {
    "snntorch_mlp": (lambda: SnnTorchMLP(snn_sg.atan(), "subtract", learn=False), 20, 3.0, snntorch_loss),
    "snntorch_synaptic": (lambda: SnnTorchMLP(snn_sg.atan(), "zero", synaptic=True, learn=False), 20, 3.0,
                          snntorch_loss),
    "snntorch_conv": (lambda: Image(SnnTorchConv(snn_sg.fast_sigmoid(slope=10), "zero")), 196, 2.0, snntorch_loss),
    "spikingjelly_mlp": (lambda: SJMLP(sj_sg.ATan(), None), 20, 4.0, spikingjelly_loss),
    "spikingjelly_conv": (lambda: Image(SJConv(sj_sg.Sigmoid(), 0.0)), 196, 12.0, spikingjelly_loss),
    "norse_mlp": (lambda: NorseMLP(), 20, 1.0, norse_loss),
    "norse_conv": (lambda: Image(NorseConv()), 196, 1.0, norse_loss),
}


@pytest.mark.parametrize("mode", ["sparse", "rate"])
@pytest.mark.parametrize("name", list(TRAINED))
def test_sparse_and_rate_modes_train_library_models(name, mode):
    """Each library's MLP and conv net compiles in sparse / rate mode without falling back
    and with every spiking neuron in that mode (learnable neuron parameters, which sparse
    mode keeps dense, are off here), the forward equals the original model's, and 20 Adam
    steps on a batch of the embedded data set lower its loss by over 10%."""
    make, channels, gain, loss_fn = TRAINED[name]
    torch.manual_seed(0)
    model = make()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(gain)
    loader, _ = make_loaders(batch_size=32, n_steps=20, n_channels=channels, n_classes=5, n_train_per_class=10,
                             n_test_per_class=1)
    x, y = next(iter(loader))
    compiled = snnopt.compile(model, mode=mode, band=0.2, example_inputs=(x,))
    report = compiled.report
    assert report.fallback is None and not report.eager, str(report)
    assert all(mode in e.op for e in report.neurons if not e.spec.startswith(("li ", "cuba_li "))), str(report)

    def loss_now():
        with torch.no_grad():
            ref, got = model(x), compiled(x)
        for a, b in zip(ref if isinstance(ref, tuple) else (ref,), got if isinstance(got, tuple) else (got,)):
            torch.testing.assert_close(a, b)
        return float(loss_fn(ref, y))

    before = loss_now()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        loss = loss_fn(compiled(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_now() < 0.9 * before


class SnnTorchLoop(nn.Module):
    """snnTorch tutorial loop around one neuron ``n``: ``state = n.init_*()`` in forward, then
    ``spk, state = step(n, fc(gain * x[t]), state)`` for every step."""

    def __init__(self, neuron, init: str, step, gain=1.0):
        super().__init__()
        self.fc, self.n = nn.Linear(20, 8), neuron
        self.init, self.step, self.gain = init, step, gain

    def forward(self, x):
        state = getattr(self.n, self.init)()
        out = []
        for t in range(x.shape[0]):
            spk, state = self.step(self.n, self.fc(self.gain * x[t]), state)
            out.append(spk)
        return torch.stack(out)


def test_unsupported_foreign_neuron_is_reported_and_runs():
    model = SnnTorchLoop(snn.Lapicque(beta=0.9), "init_lapicque", lambda n, x_t, mem: n(x_t, mem))
    x = spikes((5, 2, 20))
    compiled = snnopt.compile(model, example_inputs=(x,))
    text = str(compiled.report)
    assert "Lapicque" in text and "register_neuron" in text
    torch.testing.assert_close(compiled(x), model(x))


def alpha_step(n, x_t, state):
    spk, *state = n(x_t, *state)
    return spk, state


def test_an_eager_snntorch_neuron_starts_from_the_state_its_init_call_zeroes():
    """``init_alpha()`` inside forward zeroes the state an ``Alpha`` keeps on itself; the
    compiled model makes that call on every run, so the eager neuron does not start from the
    state the previous (eager or compiled) call left behind."""
    torch.manual_seed(9)
    model = SnnTorchLoop(snn.Alpha(alpha=0.8, beta=0.7), "init_alpha", alpha_step, gain=3.0)
    x = spikes((8, 3, 20))
    compiled = snnopt.compile(model, example_inputs=(x,))
    assert "Alpha `n` stays eager" in str(compiled.report)
    expected = model(x)
    assert expected.any()
    assert torch.equal(compiled(x), expected)  # after an eager run
    assert torch.equal(compiled(x), expected)  # after a compiled run


def test_recurrent_snntorch_neuron_stays_eager_with_one_report_entry():
    """RLeaky (recurrent weight inside the step) is never rewritten: one report line names it
    however many steps call it, and the compiled model returns the original's values."""
    def step(n, x_t, state):
        spk, mem = n(x_t, *state)
        return spk, (spk, mem)

    torch.manual_seed(8)
    model = SnnTorchLoop(snn.RLeaky(beta=0.9, linear_features=8), "init_rleaky", step)
    x = spikes((6, 3, 20))
    compiled = snnopt.compile(model, example_inputs=(x,))
    text = str(compiled.report)
    assert "RLeaky `n` stays eager" in text and text.count("stays eager") == 1 and "(x6)" in text
    assert torch.equal(compiled(x), model(x))

