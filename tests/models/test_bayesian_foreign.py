"""Gaussian weights on networks the package did not write, end to end.

Hugging Face transformers built from tiny configs with random weights (ViT, GPT-2 with its
``Conv1D`` layers, DistilBERT) and plain-torch networks written the way their authors write
them go: ``bayesianize(..., weights="gaussian")`` (the posterior means are the network's own
weights) -> a few SVI steps -> structures removed (the KL drops by exactly their rows' KL) ->
``to_deterministic`` (outputs equal to the Bayesian network's mean-weight outputs, weights equal
to the posterior means of the kept rows).
"""

from __future__ import annotations

import warnings

import foreign_networks as foreign
import pytest
import torch
import torch.nn.functional as F
from foreign_networks import CLASSES, VOCAB
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from pyro_prune.convert import count_params, to_deterministic
from pyro_prune.inference import fit
from pyro_prune.inference.divergence import DivergenceWarning
from pyro_prune.models import bayesianize
from pyro_prune.models.bayesian import BayesianLayer, BayesianLinear, gaussian_kl


# ---------------------------------------------------------------------- networks
def _distilbert() -> nn.Module:
    tf = foreign.transformers()
    return tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
        vocab_size=VOCAB, dim=16, n_layers=1, n_heads=4, hidden_dim=24, max_position_embeddings=16,
        num_labels=CLASSES))


class _MnistNet(nn.Module):
    """The layout of PyTorch's MNIST example (smaller): conv, conv, max-pool, dropout, two fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, 1)
        self.conv2 = nn.Conv2d(6, 8, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(8 * 2 * 2, 16)
        self.fc2 = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(24, 12), nn.Tanh(), nn.Linear(12, CLASSES))


CASES = foreign.cases(32, hf_vit=(foreign.hf_vit, foreign.images), hf_gpt2_conv1d=(foreign.hf_gpt2, foreign.token_ids),
              hf_distilbert=(_distilbert, foreign.token_ids), torch_mnist_cnn=(_MnistNet, foreign.images),
              torch_sequential_mlp=(_mlp, foreign.images))


def _plain_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The layers the rules cover (Linear, Conv2d, GPT-2's Conv1D), by path."""
    return {p: m for p, m in net.named_modules()
            if type(m).__name__ in ("Linear", "Conv2d", "Conv1D")}


def _logits(out: object) -> Tensor:
    return out if isinstance(out, Tensor) else out.logits  # type: ignore[attr-defined]


def _linked_kl(model: nn.Module, gate: nn.Module, removed: Tensor) -> float:
    """The KL of the rows of every Bayesian layer that ``removed`` structures of ``gate`` own."""
    total = 0.0
    for layer in model.modules():
        if not isinstance(layer, BayesianLayer):
            continue
        for g, link in zip(layer._output_gates, layer._gate_rows):
            if g is not gate:
                continue
            rows = removed if link is None else (link[0] >= 0) & removed[link[0].clamp_min(0)]
            with torch.no_grad():
                loc, scale, prior_scale = layer.weight_posterior()
                total += float(gaussian_kl(loc, scale, prior_scale).sum(-1)[rows].sum()) * layer.kl_scale
    return total


@pytest.mark.parametrize("name", list(CASES))
def test_gaussian_weights_on_a_foreign_network_end_to_end(name: str) -> None:
    make, data = CASES[name]
    torch.manual_seed(0)
    plain = make().eval()
    x = data()
    y = torch.randint(0, CLASSES, (x.shape[0],), generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # every layer gets its Gaussian weights
        model = bayesianize(plain, example_input=x[:2], weights="gaussian", gate="mask")
    prefix = "module." if hasattr(model.net, "gates") else ""

    # every Linear / Conv2d / Conv1D is Bayesian, its posterior means the network's weights
    bayes = {p[len(prefix):]: m for p, m in model.net.named_modules() if isinstance(m, BayesianLayer)}
    layers = _plain_layers(plain)
    assert set(bayes) == set(layers)
    for path, layer in bayes.items():
        w = layers[path].weight.T if type(layers[path]).__name__ == "Conv1D" else layers[path].weight
        assert layer.weight is layer.weight_loc  # what foreign code reads as .weight
        torch.testing.assert_close(layer.weight_loc, w)
    with torch.no_grad():
        torch.testing.assert_close(model.predict(x), _logits(plain(x)), rtol=1e-5, atol=1e-5)

    with warnings.catch_warnings():
        # 32 examples: the weights' KL / N dominates the loss, yet a healthy fit is no divergence
        warnings.simplefilter("error", DivergenceWarning)
        res = fit(model, TensorDataset(x, y), epochs=2, batch_size=16, lr=1e-2, progress=False, seed=0)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())

    # a gate linked to its Bayesian producer: removing structures takes exactly their rows' KL out
    linked = [(g, model.net.get_submodule(g.producer_name)) for g in model.gates().values()
              if g.producer_name is not None and isinstance(model.net.get_submodule(g.producer_name), BayesianLayer)]
    assert linked, "no gate selects a Bayesian layer's outputs"
    gate, layer = linked[0]
    assert any(g is gate for g in layer._output_gates)
    with torch.no_grad():
        loc, scale, prior_scale = layer.weight_posterior()
        rows = gaussian_kl(loc, scale, prior_scale).sum(-1) * layer.kl_scale
        before = float(model.kl_divergence())
    remove = torch.arange(gate.num_structures) % 3 == 0
    gate.prune(remove)
    with torch.no_grad():
        after = float(model.kl_divergence())
    assert before - after == pytest.approx(float(rows[remove].sum()), rel=1e-5)
    for other in model.gates().values():  # one structure of every other gate: a head's q/k/v
        if other is gate:                  # rows leave the KL with it
            continue
        with torch.no_grad():
            before = float(model.kl_divergence())
        drop = torch.arange(other.num_structures) == 1
        other.prune(drop)
        with torch.no_grad():
            after = float(model.kl_divergence())
        assert before - after == pytest.approx(_linked_kl(model, other, drop), rel=1e-5, abs=1e-3)
        if other.producer_name is None and name.startswith("hf_"):  # attention heads: rows linked
            assert before - after > 1.0

    model.eval()
    det = to_deterministic(model, example_input=x[:2])
    assert not any(isinstance(m, BayesianLayer) for m in det.modules())
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)
    assert count_params(det) < count_params(plain)
    # the converted layer holds the posterior means of the kept rows
    small = det.get_submodule(gate.producer_name)
    kept = ~remove
    assert small.weight.shape[0] == int(kept.sum())
    if small.weight.shape[1:] == layer.weight_loc.shape[1:]:  # its inputs were not pruned
        torch.testing.assert_close(small.weight, layer.weight_loc.detach()[kept])


def test_gpt2_language_model_keeps_its_tied_head_and_makes_every_conv1d_bayesian() -> None:
    tf = foreign.transformers()
    torch.manual_seed(0)
    lm = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=4, n_positions=16,
                                          bos_token_id=1, eos_token_id=1)).eval()
    ids = foreign.token_ids(32)
    with pytest.warns(RuntimeWarning, match=r"\['lm_head'\] keep point weights: their weight is tied"):
        model = bayesianize(lm, example_input=ids[:2], weights="gaussian", gate="mask")
    inner = model.net.module
    assert inner.lm_head.weight is inner.transformer.wte.weight  # still tied
    conv1d = tf.pytorch_utils.Conv1D
    bayes = [m for m in inner.modules() if isinstance(m, BayesianLayer)]
    assert len(bayes) == 4 and all(isinstance(m, BayesianLinear) and m.replaces is conv1d for m in bayes)
    with torch.no_grad():
        torch.testing.assert_close(model.predict(ids), lm(ids).logits, rtol=1e-5, atol=1e-5)
    # noise_on names the foreign type: the Bayesian layer standing for it gets its gate, linked
    with pytest.warns(RuntimeWarning, match="lm_head"):
        only = bayesianize(lm, example_input=ids[:2], weights="gaussian", noise_on=[conv1d], heads=False,
                           gate="mask")
    c_fc = only.net.get_submodule("module.transformer.h.0.mlp.c_fc")
    gate = only.gates()["gates.transformer_h_0_mlp_c_fc_gate"]
    assert isinstance(c_fc, BayesianLinear) and [g is gate for g in c_fc._output_gates] == [True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_weights_keep_the_networks_dtype(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    plain = _MnistNet().to(dtype).eval()
    x = foreign.images(32).to(dtype)
    model = bayesianize(plain, example_input=x[:2], weights="gaussian", gate="mask")
    layers = [m for m in model.net.modules() if isinstance(m, BayesianLayer)]
    assert len(layers) == 4
    assert all(m.weight.dtype == m.weight_log_scale.dtype == dtype for m in layers)
    with torch.no_grad():
        out = model.predict(x)
        assert out.dtype == dtype
        torch.testing.assert_close(out, plain(x))
    assert model.kl_divergence().dtype == dtype


class _Attention(nn.Module):
    """Pre-norm self-attention written the usual way: one fused qkv layer, SDPA, an output
    projection onto the residual stream."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(VOCAB, dim)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.emb(ids)
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.head((x + self.proj(a.transpose(1, 2).reshape(b, t, -1))).mean(1))


def test_a_removed_heads_qkv_rows_leave_the_kl_and_the_pyro_sites() -> None:
    from pyro import poutine

    from pyro_prune.inference.elbo import fast_elbo_loss, pyro_elbo_loss

    torch.manual_seed(0)
    x = foreign.token_ids(32)[:6]
    y = torch.randint(0, CLASSES, (6,))
    model = bayesianize(_Attention().eval(), example_input=x[:2], weights="gaussian", gate="mask", num_data=60)
    (gate,) = [g for n, g in model.gates().items() if n.endswith("head_gate")]
    qkv = model.net.get_submodule("module.qkv")
    # the head of each of the 48 rows: q, k and v blocks of 4 rows per head
    (link,) = [link for g, link in zip(qkv._output_gates, qkv._gate_rows) if g is gate]
    assert link is not None and link[0].tolist() == [r // 4 % 4 for r in range(48)]
    with torch.no_grad():
        qkv.weight_log_scale.uniform_(-2.0, -0.5)
        loc, scale, prior_scale = qkv.weight_posterior()
        rows = gaussian_kl(loc, scale, prior_scale).sum(-1)
        before = float(model.kl_divergence())
    gate.prune(torch.tensor([False, True, False, False]))
    head1 = torch.tensor([r // 4 % 4 == 1 for r in range(48)])
    with torch.no_grad():
        assert before - float(model.kl_divergence()) == pytest.approx(float(rows[head1].sum()), rel=1e-5)
    guide_tr = poutine.trace(model.guide).get_trace()
    assert guide_tr.nodes[f"{qkv.site_name}.weight"]["mask"].tolist() == (~head1).tolist()
    assert guide_tr.nodes[f"{qkv.site_name}.bias"]["mask"].tolist() == (~head1).tolist()
    torch.manual_seed(4)
    pyro_loss = pyro_elbo_loss(model, x, y)
    torch.manual_seed(4)
    fast_loss, _ = fast_elbo_loss(model, x, y, per_example=False)
    torch.testing.assert_close(fast_loss, pyro_loss, rtol=1e-5, atol=1e-4)
    model.eval()
    det = to_deterministic(model)
    assert det.get_submodule("module.qkv").weight.shape == (36, 16)
    torch.testing.assert_close(det.get_submodule("module.qkv").weight, qkv.weight_loc.detach()[~head1])
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)


class _AudioNet(nn.Module):
    """A 1-D convolutional classifier of raw sequences, as audio models are written: reflect
    padding, BatchNorm1d, GELU, global average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(2, 8, 5, padding=2, padding_mode="reflect")
        self.bn1 = nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 12, 3, padding="same", dilation=2)
        self.fc = nn.Linear(12, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.bn1(self.conv1(x)))
        x = F.gelu(self.conv2(x))
        return self.fc(x.mean(-1))


def test_a_one_dimensional_cnn_gets_bayesian_convolutions_end_to_end() -> None:
    from pyro_prune.models.bayesian import BayesianConv1d

    torch.manual_seed(0)
    plain = _AudioNet().eval()
    with torch.no_grad():
        plain.bn1.running_mean.uniform_(-0.2, 0.2)
        plain.bn1.running_var.uniform_(0.5, 2.0)
    x = torch.randn(32, 2, 16, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, CLASSES, (32,), generator=torch.Generator().manual_seed(2))
    model = bayesianize(plain, example_input=x[:2], weights="gaussian", gate="mask")
    convs = [m for m in model.net.modules() if isinstance(m, BayesianConv1d)]
    assert len(convs) == 2 and convs[0].padding_mode == "reflect"
    with torch.no_grad():
        torch.testing.assert_close(model.predict(x), plain(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        fit(model, TensorDataset(x, y), epochs=1, batch_size=16, lr=1e-2, progress=False, seed=0)
    gates = model.gates()
    assert set(gates) == {"bn1_gate", "conv2_gate"}  # conv1's gate after its BatchNorm
    conv2 = model.net.get_submodule("conv2")
    with torch.no_grad():
        loc, scale, prior_scale = conv2.weight_posterior()
        rows = gaussian_kl(loc, scale, prior_scale).sum(-1)
        before = float(model.kl_divergence())
    remove = torch.arange(12) % 4 == 0
    gates["conv2_gate"].prune(remove)
    gates["bn1_gate"].prune(torch.arange(8) == 3)
    with torch.no_grad():
        conv1 = model.net.get_submodule("conv1")
        loc1, scale1, _ = conv1.weight_posterior()
        row3 = gaussian_kl(loc1, scale1, prior_scale)[3].sum()
        assert before - float(model.kl_divergence()) == pytest.approx(float(rows[remove].sum() + row3), rel=1e-5)
    model.eval()
    det = to_deterministic(model)
    assert [type(m) for m in det.modules() if isinstance(m, nn.Conv1d)] == [nn.Conv1d, nn.Conv1d]
    assert det.get_submodule("conv1").padding_mode == "reflect" and det.get_submodule("conv1").out_channels == 7
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["hf_gpt2_conv1d", "hf_vit", "torch_mnist_cnn"])
def test_the_default_kl_weight_tempers_a_foreign_networks_noise_not_its_gaussian_weights(name: str) -> None:
    """bayesianize's default noise gates with Gaussian weights, fitted with fit's defaults:
    the noise KL at the paper's weight num_data / num_structures, the weights' at 1."""
    make, data = CASES[name]
    torch.manual_seed(0)
    x = data()
    y = torch.randint(0, CLASSES, (x.shape[0],), generator=torch.Generator().manual_seed(2))
    model = bayesianize(make().eval(), example_input=x[:2], weights="gaussian")
    res = fit(model, TensorDataset(x, y), epochs=0, progress=False)
    paper = x.shape[0] / model.num_structures()
    assert res.config["kl_scale"] == pytest.approx(paper)
    noise = model.noise_layers()
    bayes = [m for m in model.net.modules() if isinstance(m, BayesianLayer)]
    assert noise and bayes
    assert all(m.kl_scale == pytest.approx(paper) for m in noise.values())
    assert all(m.kl_scale == 1.0 for m in bayes)
