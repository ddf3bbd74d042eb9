"""Networks the package did not write, through the whole pipeline.

Each network (Hugging Face transformers built from tiny configs with random weights, and
plain-torch modules written the way their authors write them) goes: bayesianize -> a few
SVI steps -> 40% of every gate removed -> to_deterministic and shrink -> outputs equal to
the masked model -> fewer parameters -> torch.export of the result.
"""

from __future__ import annotations

import functools
import warnings

import foreign_networks as foreign
import pytest
import torch
from foreign_networks import CLASSES, VOCAB
from pyro.nn import PyroModule
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from pyro_prune.convert import count_params, shrink, to_deterministic
from pyro_prune.graph import structure_graph
from pyro_prune.inference import fit
from pyro_prune.models import bayesianize

transformers = pytest.importorskip("transformers")



# ---------------------------------------------------------------------- networks
def _bert() -> nn.Module:
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=32,
                                  max_position_embeddings=16, num_labels=CLASSES)
    return transformers.BertForSequenceClassification(cfg)


def _bert_eager() -> nn.Module:
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=4, intermediate_size=24,
                                  max_position_embeddings=16, num_labels=CLASSES,
                                  attn_implementation="eager")
    return transformers.BertForSequenceClassification(cfg)


def _llama_gqa() -> nn.Module:
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=32, max_position_embeddings=16,
                                   num_labels=CLASSES, pad_token_id=0)
    return transformers.LlamaForSequenceClassification(cfg)


def _funnel() -> nn.Module:
    """Funnel: its encoder builds a mask with ``ones(...).type_as(hidden)``, an op whose second
    operand has more dims than its output."""
    return transformers.FunnelForSequenceClassification(transformers.FunnelConfig(
        vocab_size=VOCAB, block_sizes=[1, 1], d_model=16, n_head=4, d_head=4, d_inner=24, num_labels=CLASSES))


def _bloom() -> nn.Module:
    """BLOOM: its attention scores are ``baddbmm(alibi, q, k^T)`` over ``[batch * heads, ...]``,
    reshaped with ``batch_size * num_heads`` computed at run time, a size the converter cannot
    rewrite: its attention gets no gate (left out, with that reason), its MLP does."""
    return transformers.BloomForSequenceClassification(transformers.BloomConfig(
        vocab_size=VOCAB, hidden_size=16, n_layer=1, n_head=4, pad_token_id=0, num_labels=CLASSES))


def _qwen2() -> nn.Module:
    """Qwen2 (a gated MLP: down(silu(gate(x)) * up(x)), grouped-query attention with q/k/v biases)."""
    return transformers.Qwen2ForSequenceClassification(transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=24, max_position_embeddings=16, pad_token_id=0, num_labels=CLASSES))


class _T5EncoderClassifier(nn.Module):
    """T5's encoder (relative-position bias from an embedding of position buckets, computed in
    its first layer and added to the scores of every layer) with a mean-pooled classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4, pad_token_id=0))
        self.head = nn.Linear(16, CLASSES)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.encoder(input_ids=ids).last_hidden_state.mean(1))


def _mpnet() -> nn.Module:
    """MPNet: a relative-position bias per head from an embedding, added to every layer's scores."""
    return transformers.MPNetForSequenceClassification(transformers.MPNetConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
        max_position_embeddings=40, num_labels=CLASSES))


def _swin() -> nn.Module:
    """Swin on 32x32 one-channel images: its scores add a per-head relative-position bias table."""
    return transformers.SwinForImageClassification(transformers.SwinConfig(
        image_size=32, patch_size=4, num_channels=1, embed_dim=16, depths=[1], num_heads=[2], window_size=4,
        num_labels=CLASSES))


def _mobilenet_v2() -> nn.Module:
    """MobileNetV2 with TensorFlow-style "same" padding (``F.pad`` before its strided
    convolutions) and ReLU6."""
    return transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config(
        num_channels=1, image_size=32, depth_multiplier=0.25, num_labels=CLASSES))


def _falcon() -> nn.Module:
    """Falcon with multi-query attention: one key/value head read by every query head, picked
    out of the fused projection by index tensors (``qkv[..., [-2], :]``)."""
    return transformers.FalconForSequenceClassification(transformers.FalconConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, pad_token_id=0,
        num_labels=CLASSES))


def _levit() -> nn.Module:
    """LeViT: its MLP layers with BatchNorm reshape back with ``reshape_as``."""
    return transformers.LevitForImageClassification(transformers.LevitConfig(
        image_size=32, num_channels=1, hidden_sizes=[16, 24, 32], num_attention_heads=[2, 2, 2],
        depths=[1, 1, 1], key_dim=[8, 8, 8], num_labels=CLASSES))


def _deberta_v2() -> nn.Module:
    """DeBERTa-v2: disentangled attention with 3-d batched products over ``[batch * heads, ...]``."""
    return transformers.DebertaV2ForSequenceClassification(transformers.DebertaV2Config(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=4, intermediate_size=24,
        max_position_embeddings=16, num_labels=CLASSES))


class _SequenceMLP(nn.Module):
    """[N, T, F] inputs: a per-token MLP, mean over tokens, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(12, 10)
        self.norm = nn.LayerNorm(10)
        self.head = nn.Linear(10, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc2(self.act(self.fc1(x)))
        return self.head(self.norm(torch.relu(h)).mean(1))


class _EmbeddingBag(nn.Module):
    """int64 token ids into nn.Embedding, SiLU MLP, chunk into two halves, cat."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(8, 6)
        self.fc3 = nn.Linear(8, 6)
        self.head = nn.Linear(12, CLASSES)

    def forward(self, ids: Tensor) -> Tensor:
        h = nn.functional.silu(self.fc1(self.emb(ids)))
        a, b = h.chunk(2, dim=-1)
        z = torch.cat([torch.relu(self.fc2(a)), torch.relu(self.fc3(b))], dim=-1)
        return self.head(z.amax(1))


class _MobileBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise 3x3, ReLU6 / Hardswish, 1x1 project."""

    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        h = c * expand
        self.expand = nn.Conv2d(c, h, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(h)
        self.dw = nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False)
        self.bn2 = nn.BatchNorm2d(h)
        self.project = nn.Conv2d(h, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        h = nn.functional.relu6(self.bn1(self.expand(x)))
        h = nn.functional.hardswish(self.bn2(self.dw(h)))
        return x + self.bn3(self.project(h))


class _MobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(_MobileBlock(8, 2), _MobileBlock(8, 3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))


class _GroupedResNeXt(nn.Module):
    """A grouped 3x3 (4 groups) between gated 1x1s, GroupNorm, stochastic depth (eval)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.reduce = nn.Conv2d(8, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(4, 16)
        self.expand = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 12)
        self.head = nn.Linear(12, CLASSES)
        self.drop_path = 0.1

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv1(x))
        h = self.expand(torch.relu(self.gn(self.grouped(torch.relu(self.reduce(x))))))
        if self.training and self.drop_path > 0:  # stochastic depth, per example
            keep = (torch.rand(x.shape[0], 1, 1, 1) > self.drop_path).to(x.dtype)
            h = h * keep / (1 - self.drop_path)
        x = x + h
        return self.head(torch.relu(self.fc(x.mean((2, 3)))))


class _EncoderClassifier(nn.Module):
    """nn.TransformerEncoder (nn.MultiheadAttention inside) on [N, T, F] inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 12)
        self.head = nn.Linear(12, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(self.inp(x))
        return self.head(torch.tanh(self.fc(h.mean(1))))


class _FrozenBatchNorm(nn.Module):
    """BatchNorm written with F.batch_norm on its own parameters and statistics."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)
        self.bias = nn.Parameter(torch.randn(c) * 0.1)
        self.register_buffer("running_mean", torch.randn(c) * 0.1)
        self.register_buffer("running_var", torch.rand(c) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                        False, 0.0, 1e-5)


class _FunctionalBatchNormNet(nn.Module):
    """F.batch_norm after each convolution, SiLU and GELU, stochastic depth (training only)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = _FrozenBatchNorm(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = _FrozenBatchNorm(8)
        self.fc = nn.Linear(8, 12)
        self.head = nn.Linear(12, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = nn.functional.silu(self.bn1(self.conv1(x)))
        branch = nn.functional.silu(self.bn2(self.conv2(h)))
        if self.training:  # stochastic depth: drop the branch for some examples
            branch = branch * (torch.rand(x.shape[0], 1, 1, 1) > 0.2).to(x.dtype) / 0.8
        h = h + branch
        return self.head(nn.functional.gelu(self.fc(h.mean((2, 3)))))


class _InlineBatchNormNet(nn.Module):
    """F.batch_norm written in the network's own forward (and once inside a module), with a
    shape check torch.fx cannot trace (so the network is traced with torch.export)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn_weight = nn.Parameter(torch.rand(8) + 0.5)
        self.bn_bias = nn.Parameter(torch.randn(8) * 0.1)
        self.register_buffer("bn_mean", torch.randn(8) * 0.1)
        self.register_buffer("bn_var", torch.rand(8) + 0.5)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = _FrozenBatchNorm(8)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2:
            raise ValueError("the images need an even width")
        h = nn.functional.batch_norm(self.conv1(x), self.bn_mean, self.bn_var, self.bn_weight,
                                     self.bn_bias, False, 0.0, 1e-5)
        h = nn.functional.max_pool2d(nn.functional.relu(h), 2)
        h = nn.functional.silu(self.bn2(self.conv2(h)))
        return self.fc(h.mean((2, 3)))


class _AttentionPool(nn.Module):
    """nn.MultiheadAttention as its authors use it: sequence-first, a key padding mask."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 12)
        self.head = nn.Linear(12, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x).transpose(0, 1)  # [T, N, F]
        pad = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
        pad[:, -1] = True  # the last step is padding
        a, _ = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)
        h = self.norm(h + a)
        return self.head(torch.relu(self.fc(h.mean(0))))


class _ResNetBasicBlocks(nn.Module):
    """torchvision's BasicBlock as written there (``nn.ReLU(inplace=True)``, ``out +=
    identity``) behind an input check torch.fx cannot trace: traced with torch.export, where
    the two become ``relu_`` and ``add_``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.relu = nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(inplace=True)
        self.layer1, self.layer2 = foreign.BasicBlock(8), foreign.BasicBlock(8)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected [N, C, H, W] images, got {tuple(x.shape)}")
        x = self.layer2(self.layer1(self.relu(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _pyro_linear_bnn() -> nn.Module:
    """The network of Pyro's BNN tutorial: PyroModule[nn.Linear] layers."""
    return nn.Sequential(PyroModule[nn.Linear](5, 12), nn.ReLU(), PyroModule[nn.Linear](12, 10),
                         nn.Tanh(), PyroModule[nn.Linear](10, CLASSES))


CASES = foreign.cases(
    48, hf_bert=(_bert, foreign.token_ids), hf_bert_eager=(_bert_eager, foreign.token_ids),
    hf_gpt2=(functools.partial(foreign.hf_gpt2, layers=2), foreign.token_ids), hf_llama_gqa=(_llama_gqa, foreign.token_ids),
    hf_vit=(functools.partial(foreign.hf_vit, layers=2, intermediate=32), foreign.images),
    sequence_mlp_layernorm=(_SequenceMLP, foreign.sequences), embedding_chunk_cat=(_EmbeddingBag, foreign.token_ids),
    mobilenet_depthwise_relu6=(_MobileNet, foreign.images), resnext_grouped_groupnorm=(_GroupedResNeXt, foreign.images),
    pyro_linear_bnn=(_pyro_linear_bnn, foreign.vectors), transformer_encoder_mha=(_EncoderClassifier, foreign.sequences),
    functional_batchnorm_silu_gelu=(_FunctionalBatchNormNet, foreign.images),
    functional_batchnorm_inline_export=(_InlineBatchNormNet, foreign.images),
    multihead_attention=(_AttentionPool, foreign.sequences),
    hf_opt_tokens_folded=(foreign.hf_opt, foreign.token_ids),
    hf_mobilevit_patches_folded=(foreign.hf_mobilevit, foreign.large_images),
    hf_funnel_type_as=(_funnel, foreign.token_ids), hf_bloom_alibi_baddbmm=(_bloom, foreign.token_ids),
    hf_qwen2=(_qwen2, foreign.token_ids), hf_mobilenet_v2_same_padding=(_mobilenet_v2, foreign.large_images),
    resnet_inplace_export=(_ResNetBasicBlocks, foreign.images), hf_falcon_multi_query=(_falcon, foreign.token_ids),
    hf_levit_reshape_as=(_levit, foreign.large_images), squeeze_excite_expand_as=(foreign.SENet, foreign.images),
    hf_swin_relative_bias=(_swin, foreign.large_images),
    hf_t5_encoder_relative_bias=(_T5EncoderClassifier, foreign.token_ids),
    hf_mpnet_relative_bias=(_mpnet, foreign.token_ids))
SLOW = {"hf_gpt2", "hf_llama_gqa", "hf_vit", "hf_bert_eager", "transformer_encoder_mha", "multihead_attention",
        "hf_opt_tokens_folded", "hf_mobilevit_patches_folded", "hf_funnel_type_as", "hf_bloom_alibi_baddbmm",
        "hf_qwen2", "hf_mobilenet_v2_same_padding", "hf_falcon_multi_query", "hf_levit_reshape_as",
        "hf_swin_relative_bias", "hf_t5_encoder_relative_bias", "hf_mpnet_relative_bias"}
#: attention whose scores add a per-head relative-position bias (the bias follows the heads):
#: the number of attention layers, each with its head gate
RELATIVE_BIAS = {"hf_swin_relative_bias": 1, "hf_t5_encoder_relative_bias": 2, "hf_mpnet_relative_bias": 2}
#: networks with nn.MultiheadAttention: its 4 heads get one gate, 40% of it (2 heads) go
MHA = {"transformer_encoder_mha", "multihead_attention"}


def _prune_fraction(model: nn.Module, fraction: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for gate in model.gates().values():  # type: ignore[operator]
        n = gate.num_structures
        k = int(round(fraction * n))
        remove = torch.zeros(n, dtype=torch.bool)
        remove[torch.randperm(n, generator=gen)[:k]] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gate.prune(remove)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASES])
def test_any_network_through_the_pipeline(name: str) -> None:
    make, data = CASES[name]
    torch.manual_seed(0)
    plain = make().eval()
    x = data()
    y = torch.randint(0, CLASSES, (x.shape[0],), generator=torch.Generator().manual_seed(2))
    model = bayesianize(plain, example_input=x[:2])
    assert model.gates(), "bayesianize put no gate"
    if name in RELATIVE_BIAS:  # every attention's heads are gated
        assert sum(n.endswith("head_gate") for n in model.gates()) == RELATIVE_BIAS[name], list(model.gates())
    fit(model, TensorDataset(x, y), epochs=1, batch_size=16, lr=1e-2, progress=False, seed=0)
    _prune_fraction(model, 0.4, seed=3)
    model.eval()
    det = to_deterministic(model, example_input=x[:2])
    small, _guide = shrink(model, example_input=x[:2])
    with torch.no_grad():
        want = model.predict(x)
        got = det(x)
        kept = small.predict(x)
    assert float((got - want).abs().max()) <= 1e-5
    assert float((kept - want).abs().max()) <= 1e-5
    assert count_params(det) < count_params(plain)
    if name in MHA:  # whole heads left q, k, v and the output projection
        assert [g.num_structures for n, g in model.gates().items() if n.endswith("head_gate")] == [4]
        shapes = {k.rsplit(".", 2)[-2]: tuple(v.shape) for k, v in det.state_dict().items()
                  if k.endswith("_proj.weight")}
        assert shapes == {"q_proj": (8, 16), "k_proj": (8, 16), "v_proj": (8, 16), "out_proj": (16, 8)}
    exported = torch.export.export(det, (x[:4],), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x[:4]), want[:4], rtol=1e-5, atol=1e-5)


def test_conversion_restores_every_module_mode_exactly() -> None:
    torch.manual_seed(0)
    model = bayesianize(_MobileNet().eval(), example_input=foreign.images()[:2])
    model.train()
    frozen = model.net.get_submodule("blocks.0.bn1")
    frozen.eval()  # a frozen BatchNorm inside a training model
    modes = {name: m.training for name, m in model.named_modules()}
    to_deterministic(model)
    shrink(model)
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_a_gate_for_a_functional_batch_norm_goes_after_it_on_the_export_path() -> None:
    torch.manual_seed(0)
    x = foreign.images()
    model = bayesianize(_InlineBatchNormNet().eval(), example_input=x[:2])
    info = structure_graph(model).gates
    assert structure_graph(model).tracer == "export"
    assert set(info) == {"gates.conv1_gate", "gates.conv2_gate"}
    # both gates sit after their BatchNorm: a removed channel is exactly zero after the gate,
    # so every channel can go (before the BatchNorm its shift would keep the channel alive)
    assert all(g.can_shrink and g.producer is not None for g in info.values())
    gates = model.gates()
    for name in ("gates.conv1_gate", "gates.conv2_gate"):
        gates[name].prune(torch.arange(8) < 3)
    model.eval()
    det = to_deterministic(model, example_input=x[:2])
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)
    widths = {k: tuple(v.shape) for k, v in det.state_dict().items() if k.endswith("conv1.weight")
              or k.endswith("conv2.weight") or k.endswith("fc.weight")}
    assert sorted(widths.values()) == [(3, 5), (5, 1, 3, 3), (5, 5, 3, 3)]


class _InlineBatchNormSiLU(_InlineBatchNormNet):
    """F.batch_norm followed by SiLU in the network's own code: no gate can follow it."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2:
            raise ValueError("the images need an even width")
        h = nn.functional.batch_norm(self.conv1(x), self.bn_mean, self.bn_var, self.bn_weight,
                                     self.bn_bias, False, 0.0, 1e-5)
        h = nn.functional.silu(self.bn2(self.conv2(nn.functional.silu(h))))
        return self.fc(h.mean((2, 3)))


def test_a_functional_batch_norm_no_gate_can_follow_is_reported_and_left_ungated() -> None:
    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match=r"no gate on \['module.conv1'\].*F.batch_norm"):
        model = bayesianize(_InlineBatchNormSiLU().eval(), example_input=foreign.images()[:2])
    assert set(model.gates()) == {"gates.conv2_gate"}


@pytest.mark.parametrize("name", ["hf_bert", "sequence_mlp_layernorm"])
def test_gaussian_weights_link_each_gate_to_its_bayesian_producer_when_wrapped(name: str) -> None:
    from pyro_prune.models.bayesian import BayesianLayer

    make, data = CASES[name]
    torch.manual_seed(0)
    x = data()
    model = bayesianize(make().eval(), example_input=x[:2], weights="gaussian")
    linked = [(g, model.net.get_submodule(g.producer_name)) for g in model.gates().values()
              if g.producer_name is not None
              and isinstance(model.net.get_submodule(g.producer_name), BayesianLayer)]
    assert linked, "no gate selects a Bayesian layer's outputs"
    for gate, layer in linked:
        assert any(g is gate for g in layer._output_gates)
    gate, layer = linked[0]
    before = float(layer.kl_divergence().detach())
    remove = torch.zeros(gate.num_structures, dtype=torch.bool)
    remove[0] = True
    gate.prune(remove)
    assert float(layer.kl_divergence().detach()) < before


class _CausalSelfAttention(nn.Module):
    """Causal self-attention as GPT implementations write it: one fused qkv layer ``split``
    into q, k and v, ``.view`` into heads, SDPA (or the explicit product), ``.contiguous().view``
    back, a residual stream. Fed float features ``[N, T, 16]`` or, with ``vocab``, token ids."""

    def __init__(self, sdpa: bool, vocab: int | None = None, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.sdpa, self.heads, self.dim = sdpa, heads, dim
        self.emb = nn.Embedding(vocab, dim) if vocab is not None else None
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        if self.emb is not None:
            x = self.emb(x)
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(self.dim, dim=2)
        q = q.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        k = k.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        v = v.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        if self.sdpa:
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / (c // self.heads) ** 0.5)
            y = att.softmax(dim=-1) @ v
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.head(self.norm(x + self.c_proj(y))[:, -1])


@pytest.mark.parametrize("sdpa,tokens", [(True, False), (False, False), (True, True)])
def test_attention_split_from_a_fused_layer_gets_its_heads_on_any_input(sdpa: bool, tokens: bool) -> None:
    """Float features and no embedding layer: torch.fx traces the network, but only the export
    path writes ``split`` and SDPA out for the analysis; without that q, k and v lost their
    channels and no head gate was found (bayesianize found nothing to gate at all)."""
    torch.manual_seed(0)
    x = foreign.token_ids() if tokens else foreign.sequences().repeat(1, 1, 3)[..., :16]
    net = _CausalSelfAttention(sdpa, VOCAB if tokens else None).eval()
    model = bayesianize(net, example_input=x[:2], gate="mask")
    info = structure_graph(model).gates
    assert list(info) == ["gates.c_proj_head_gate"]
    (head,) = info.values()
    assert (head.kind, head.num_structures, head.rows, head.can_shrink) == ("head", 4, ("module.c_attn",), True)
    with torch.no_grad():
        torch.testing.assert_close(model.predict(x), net(x), rtol=1e-5, atol=1e-5)
    model.gates()["gates.c_proj_head_gate"].prune(torch.tensor([False, True, False, True]))
    model.eval()
    det = to_deterministic(model, example_input=x[:2])
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)
    widths = {k: tuple(v.shape) for k, v in det.state_dict().items() if k.endswith("c_attn.weight")
              or k.endswith("c_proj.weight")}
    assert sorted(widths.values()) == [(16, 8), (24, 16)]  # two of four heads left q, k, v


@pytest.mark.filterwarnings("ignore:pruning would empty")  # the task needs one neuron
def test_the_default_recipe_prunes_a_decoder_that_folds_its_tokens_into_the_batch() -> None:
    """OPT's decoder layers run their MLP on ``[batch * tokens, width]``: on the defaults each
    example's tokens share one noise draw, the run prunes, and the result converts."""
    from pyro_prune.inference import ContinuousPruning, evaluate

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (640, 8), generator=gen)
    labels = ((ids == 5) | (ids == 7)).any(1).long()  # a token the network must find
    train, test = TensorDataset(ids[:384], labels[:384]), TensorDataset(ids[384:], labels[384:])
    torch.manual_seed(0)
    model = bayesianize(foreign.hf_opt().eval(), example_input=ids[:2])
    result = fit(model, train, batch_size=32, lr=1e-2, progress=False, seed=0, schedule=ContinuousPruning())
    neurons = [g for n, g in model.gates().items() if n.endswith("fc1_gate")]
    assert neurons and sum(int(g.kept.sum()) for g in neurons) <= sum(g.num_structures for g in neurons) // 2
    assert evaluate(model, test)["accuracy"] >= 0.9
    assert "removed" in str(result.report)
    det = to_deterministic(model, example_input=ids[:2])
    with torch.no_grad():
        torch.testing.assert_close(det(ids[384:]), model.predict(ids[384:]), rtol=1e-5, atol=1e-5)
    assert count_params(det) < count_params(foreign.hf_opt())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:pruning would empty")  # the task needs one neuron
def test_the_default_recipe_removes_heads_whose_scores_take_a_relative_position_bias() -> None:
    """T5's encoder computes one relative-position bias per head in its first layer and adds
    it to the scores of both: on the defaults (fit + ContinuousPruning(), nothing else) heads
    of both layers go, each layer selecting its kept heads' bias, and the result converts."""
    from pyro_prune.inference import ContinuousPruning, evaluate

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (640, 8), generator=gen)
    labels = ((ids == 5) | (ids == 7)).any(1).long()  # a token the network must find
    train, test = TensorDataset(ids[:384], labels[:384]), TensorDataset(ids[384:], labels[384:])
    torch.manual_seed(0)
    model = bayesianize(_T5EncoderClassifier().eval(), example_input=ids[:2])
    result = fit(model, train, batch_size=32, lr=1e-2, progress=False, seed=0, schedule=ContinuousPruning())
    heads = [g for n, g in model.gates().items() if n.endswith("head_gate")]
    assert len(heads) == 2 and all(0 < int(g.kept.sum()) < g.num_structures for g in heads)
    assert evaluate(model, test)["accuracy"] >= 0.9
    assert "attention heads" in str(result.report)
    det = to_deterministic(model, example_input=ids[:2])
    with torch.no_grad():
        torch.testing.assert_close(det(ids[384:]), model.predict(ids[384:]), rtol=1e-5, atol=1e-5)
    assert count_params(det) < count_params(_T5EncoderClassifier()) // 2


class _FoldedHeadsWithBias(nn.Module):
    """Attention with its heads folded into the batch for a 3-d ``bmm`` and a per-head bias
    repeated along that folded axis: ``[batch * heads, 1, keys]`` with the batch outermost, as
    BLOOM lays out ALiBi, or (``heads_outermost``) the whole attention folded as
    ``[heads * batch, ...]``, a layout the analysis of one example cannot tell apart."""

    def __init__(self, dim: int = 16, heads: int = 4, heads_outermost: bool = False, baddbmm: bool = False) -> None:
        super().__init__()
        self.heads, self.heads_outermost, self.baddbmm = heads, heads_outermost, baddbmm
        self.embed = nn.Linear(6, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.slopes = nn.Parameter(torch.linspace(-1.0, 1.0, heads).reshape(heads, 1, 1))
        self.ff = nn.Sequential(nn.Linear(dim, 24), nn.ReLU(), nn.Linear(24, dim))
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        x = self.embed(x)
        order = (2, 3, 0, 1, 4) if self.heads_outermost else (2, 0, 3, 1, 4)
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, 4).permute(*order).reshape(3, -1, n, 4)
        slopes = self.slopes.repeat_interleave(b, dim=0) if self.heads_outermost else self.slopes.repeat(b, 1, 1)
        alibi = slopes * torch.arange(n, dtype=x.dtype)
        if self.baddbmm:  # as BLOOM adds it
            scores = alibi.baddbmm(qkv[0], qkv[1].transpose(1, 2), beta=1.0, alpha=0.5)
        else:
            scores = torch.bmm(qkv[0], qkv[1].transpose(1, 2)) + alibi
        out = torch.bmm(scores.softmax(-1), qkv[2])
        if self.heads_outermost:
            out = out.reshape(self.heads, b, n, 4).permute(1, 2, 0, 3)
        else:
            out = out.reshape(b, self.heads, n, 4).transpose(1, 2)
        x = x + self.proj(out.reshape(b, n, -1))
        return self.head((x + self.ff(x)).mean(1))


@pytest.mark.parametrize("baddbmm", [False, True], ids=["bmm_add", "baddbmm"])
def test_heads_folded_into_the_batch_take_their_bias_along_it(baddbmm: bool) -> None:
    """A bias per head along the folded ``[batch * heads]`` axis (BLOOM's ALiBi layout, added
    by ``baddbmm`` or written out): the converted network selects each example's kept heads,
    and equals the model."""
    torch.manual_seed(0)
    x = foreign.sequences(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # nothing left out
        model = bayesianize(_FoldedHeadsWithBias(baddbmm=baddbmm).eval(), example_input=x[:2])
    (gate,) = [g for n, g in model.gates().items() if n.endswith("head_gate")]
    gate.prune(torch.tensor([True, False, True, False]))
    model.eval()
    det = to_deterministic(model, example_input=x[:2])
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)
    assert _weight_shape(det, "qkv") == (24, 16) and _weight_shape(det, "proj") == (16, 8)


def _weight_shape(det: nn.Module, layer: str) -> tuple[int, ...]:
    (w,) = [v for k, v in det.state_dict().items() if k.removeprefix("module.") == f"{layer}.weight"]
    return tuple(w.shape)


def test_a_converted_network_that_differs_is_refused_with_what_went_wrong() -> None:
    """A bias along folded heads laid out heads-outermost: the one-example analysis cannot tell
    it from the batch-outermost layout, the converted network computes something else, and
    the conversion says so (and that the model itself is unaffected)."""
    torch.manual_seed(0)
    x = foreign.sequences(4)
    model = bayesianize(_FoldedHeadsWithBias(heads_outermost=True).eval(), example_input=x[:2],
                        check_conversion=False)  # the head gate bayesianize would leave out
    heads = [g for n, g in model.gates().items() if n.endswith("head_gate")]
    assert heads
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        heads[0].prune(torch.tensor([True, False, True, True]))
    with pytest.raises(RuntimeError, match=r"conversion check failed: the converted network differs from "
                                           r"model.predict .*head_gate.*per-head bias.*is unaffected"):
        to_deterministic(model, example_input=x[:2])
    assert torch.isfinite(model.predict(x)).all()


class _GatedMLP(nn.Module):
    """A SwiGLU block as Llama-style code writes it: ``w2(silu(w1(x)) * w3(x))``, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.w1, self.w3, self.w2 = nn.Linear(8, 6, bias=False), nn.Linear(8, 6, bias=False), nn.Linear(6, 8)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        h = h + self.w2(torch.nn.functional.silu(self.w1(h)) * self.w3(h))
        return self.head(h)


def test_gates_tied_by_a_product_that_leave_no_neuron_alive_convert_to_a_zero_layer() -> None:
    """The gate after ``w1`` keeps neuron 0, the one after ``w3`` neuron 5: every product
    ``silu(w1 x)_i * (w3 x)_i`` is zero. The converted block keeps one zero neuron (it is not
    absent: the layers around it need a width) and equals the model."""
    torch.manual_seed(0)
    x = foreign.vectors(16)
    model = bayesianize(_GatedMLP().eval(), example_input=x[:2])
    gates = {n.removesuffix("_gate"): g for n, g in model.gates().items()}
    assert {"w1", "w3"} <= set(gates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gates["w1"].prune(torch.arange(6) != 0)
        gates["w3"].prune(torch.arange(6) != 5)
    model.eval()
    det = to_deterministic(model, example_input=x[:2])
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)
    widths = {k.split(".")[-2]: tuple(v.shape) for k, v in det.state_dict().items() if k.endswith(".weight")}
    assert widths["w1"] == (1, 8) and widths["w3"] == (1, 8) and widths["w2"] == (8, 1)
    # the counters see the same network: 5 of 6 rows of w1 and w3 and 5 of 6 columns of w2 gone
    assert count_params(det) == count_params(model) == count_params(_GatedMLP()) - 2 * 5 * 8 - 5 * 8


@pytest.mark.parametrize(("make", "data", "left_out"), [
    (functools.partial(_FoldedHeadsWithBias, heads_outermost=True), foreign.sequences,
     r"proj.*differs"),  # a bias along folded heads, heads outermost
], ids=["folded_heads_bias_heads_outermost"])
def test_gates_the_converter_cannot_carry_out_are_left_out_with_the_reason(make, data, left_out: str) -> None:
    torch.manual_seed(0)
    x = data(16)
    with pytest.warns(RuntimeWarning, match=r"no gate on .*cannot be converted into a smaller network \(.*" + left_out):
        model = bayesianize(make().eval(), example_input=x[:2])
    assert model.gates(), "the MLPs keep their gates"
    _prune_fraction(model, 0.4, seed=3)
    model.eval()
    det = to_deterministic(model, example_input=x[:2])
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)
    assert count_params(det) < count_params(make())


def test_heads_folded_into_the_batch_for_bmm_are_found() -> None:
    """DeBERTa-v2 computes attention with 3-d ``bmm`` over ``[batch * heads, ...]``: its heads
    get one gate (before, its q/k/v neurons were gated and then left out as unconvertible),
    and removing two of the four takes their q, k and v rows out."""
    torch.manual_seed(0)
    x = foreign.token_ids(16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # nothing left out
        model = bayesianize(_deberta_v2().eval(), example_input=x[:2])
    (head,) = [g for g in structure_graph(model).gates.values() if g.kind == "head"]
    assert head.num_structures == 4
    assert sorted(r.rsplit(".", 1)[-1] for r in head.rows) == ["key_proj", "query_proj", "value_proj"]
    gate = model.gates()[[n for n, g in model.gates().items() if n.endswith("head_gate")][0]]
    gate.prune(torch.tensor([True, False, True, False]))
    model.eval()
    det = to_deterministic(model, example_input=x[:2])
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)
    shapes = {k.rsplit(".", 2)[-2]: tuple(v.shape) for k, v in det.state_dict().items()
              if k.endswith(("query_proj.weight", "key_proj.weight", "value_proj.weight"))}
    assert shapes == {"query_proj": (8, 16), "key_proj": (8, 16), "value_proj": (8, 16)}


class _GRUClassifier(nn.Module):
    """A recurrent classifier: the embedding's channels feed ``nn.GRU``, an op the converter
    does not trace; the output layer cannot shrink."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.gru, self.fc = nn.Linear(6, 12), nn.GRU(12, 12, batch_first=True), nn.Linear(12, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.gru(torch.relu(self.emb(x)))
        return self.fc(out[:, -1])


def test_layers_whose_channels_reach_an_op_the_converter_cannot_trace_get_no_gate_and_are_named() -> None:
    x = foreign.sequences(4)
    with pytest.raises(ValueError, match=r"no layer .*\['module\.emb'\] get no gate: their channels reach ops the "
                                         r"converter cannot trace \(\['torch\.ops\.aten\.gru"):
        bayesianize(_GRUClassifier(), example_input=x[:2])


def test_bloom_attention_is_left_out_for_its_head_count_computed_at_run_time() -> None:
    """BLOOM's ``baddbmm`` is traced, but ``reshape(batch_size * num_heads, ...)`` multiplies
    the run-time batch by a constant the converter cannot rewrite: the attention's layers are
    named with that reason and get no gate, the MLP does."""
    with pytest.warns(RuntimeWarning, match=r"no gate on \[.*query_key_value'\]: removing their structures "
                                            r"cannot be converted .*computed at run time .*use -1 there"):
        model = bayesianize(_bloom().eval(), example_input=foreign.token_ids(2))
    assert [n for n in model.gates() if "query_key_value" in n] == [] and model.gates()


class _CumulativeFeatures(nn.Module):
    """A running sum over the features between two layers: an op the converter does not
    trace, which pins every channel of the layer before it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(5, 12), nn.Linear(12, 10), nn.Linear(10, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.cumsum(torch.relu(self.fc1(x)), dim=-1)
        return self.head(torch.relu(self.fc2(h)))


def test_a_hidden_layer_an_unknown_op_pins_whole_is_named() -> None:
    """Before, only a layer some of whose channels stayed free was named; one the op pinned
    whole lost its gate silently. An output layer reaching such an op (a decoder classifier
    pooling its last token) is not named: it gets no gate anyway."""
    with pytest.warns(RuntimeWarning, match=r"\['fc1'\] get no gate: their channels reach ops the converter "
                                            r"cannot trace \(\['torch\.cumsum"):
        model = bayesianize(_CumulativeFeatures(), example_input=foreign.vectors(2))
    assert [g.rows for g in structure_graph(model).gates.values()] == [("fc2",)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        bayesianize(foreign.hf_gpt2().eval(), example_input=foreign.token_ids(2))
