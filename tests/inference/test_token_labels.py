"""Language models: logits ``[N, T, V]`` and per-token labels ``[N, T]`` (the next tokens).

The observation is a categorical over the vocabulary with the token axes an event, so an
example's log likelihood is the sum over its tokens; ``fit`` (both engines' losses),
``evaluate``, the predictive metrics, pruning and conversion take such labels on a Hugging
Face GPT-2 from a tiny config and on a plain-torch embedding + MLP language model.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from pyro_prune.convert import count_params, to_deterministic
from pyro_prune.inference import ContinuousPruning, evaluate, fit
from pyro_prune.inference.elbo import fast_elbo_loss, pyro_elbo_loss
from pyro_prune.inference.schedules import PruningStepsWarning
from pyro_prune.models import bayesianize
from pyro_prune.models.base import PrunableNet
from pyro_prune.predictive import evaluate_predictive, log_predictive_density
from pyro_prune.reduction import structure_removals

VOCAB, SEQ = 12, 8


def _tokens(n: int, seed: int = 0) -> TensorDataset:
    """Sequences counting up modulo the vocabulary from a random start: the next token is a
    function of the current one, so a model that learns must lower the loss."""
    g = torch.Generator().manual_seed(seed)
    seq = (torch.randint(0, VOCAB, (n, 1), generator=g) + torch.arange(SEQ + 1)) % VOCAB
    return TensorDataset(seq[:, :-1], seq[:, 1:])


class TinyLM(nn.Module):
    """A token embedding, one hidden layer per position and a head over the vocabulary."""

    def __init__(self, vocab: int, dim: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(torch.relu(self.hidden(self.embed(ids))))


def _gpt2(dropout: float = 0.0) -> nn.Module:
    """The tiny GPT-2 language model (``dropout`` 0.1: the config's own dropout)."""
    tf = pytest.importorskip("transformers")
    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=4,
                                            n_positions=16, bos_token_id=1, eos_token_id=1,
                                            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout))


def _model(name: str, num_data: int | None = None) -> PrunableNet:
    torch.manual_seed(0)
    net = TinyLM(VOCAB) if name == "plain" else _gpt2()
    return bayesianize(net, example_input=_tokens(2).tensors[0], num_data=num_data)


def _token_log_lik(logits: Tensor, y: Tensor) -> Tensor:
    """``sum_t log softmax(logits_nt)[y_nt]`` per example, the reference."""
    return torch.log_softmax(logits.double(), -1).gather(-1, y[..., None])[..., 0].sum(-1)


@pytest.mark.parametrize("name", ["plain", "gpt2"])
def test_a_language_model_fits_on_token_labels_then_prunes_and_converts(name: str) -> None:
    train, test = _tokens(128, seed=0), _tokens(64, seed=1)
    model = _model(name)
    before = evaluate(model, test)
    x, y = test.tensors
    # the loss is per example: the sum of its tokens' negative log likelihoods
    assert before["loss"] == pytest.approx(float(-_token_log_lik(model.predict(x), y).mean()),
                                           rel=1e-5)
    assert before["loss"] > 0.5 * SEQ * math.log(VOCAB)  # random weights: near uniform
    history = fit(model, train, epochs=2, batch_size=16, lr=1e-2, seed=0, progress=False).history
    assert all(0.0 <= row["train_accuracy"] <= 1.0 for row in history if "train_accuracy" in row)
    after = evaluate(model, test)
    assert after["loss"] < 0.8 * before["loss"], (before, after)
    # per-token accuracy: the share of the N x T next tokens the argmax gets right
    logits = model.predict(x)
    assert after["accuracy"] == pytest.approx(float((logits.argmax(-1) == y).double().mean()))
    assert after["accuracy"] > before["accuracy"]
    assert after["loss"] == pytest.approx(float(-_token_log_lik(logits, y).mean()), rel=1e-5)

    # the posterior predictive: one lpd per example, over its tokens together
    lpd = log_predictive_density(model, test, draws=4, seed=0)
    assert lpd.shape == (len(test),) and bool(torch.isfinite(lpd).all())
    metrics = evaluate_predictive(model, test, draws=4, seed=0)
    assert metrics["nll"] == pytest.approx(float(-lpd.mean()), rel=1e-9)
    assert 0.0 <= metrics["accuracy"] <= 1.0

    # BMRS's decisions (two short epochs keep every structure) and, so that the conversion
    # has something to remove, every other structure of each gate by hand
    removals = structure_removals(model, "bmrs_u")
    for gate_name, remove in removals.items():
        every_other = torch.arange(len(remove)) % 2 == 1
        model.gates()[gate_name].prune(remove | every_other)
    model.eval()
    small = to_deterministic(model)
    assert count_params(small) < count_params(model.net)
    torch.testing.assert_close(small(x), model.predict(x), rtol=1e-4, atol=1e-4)


def _both_engines(model: PrunableNet, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The Pyro and the fast ELBO loss with the same random numbers (one draw shared by the
    batch), and the fast engine's network output."""
    pyro.set_rng_seed(1)
    pyro_loss = pyro_elbo_loss(model, x, y)
    pyro.set_rng_seed(1)
    fast_loss, out = fast_elbo_loss(model, x, y, per_example=False)
    return pyro_loss, fast_loss, out


@pytest.mark.parametrize("kl_scale", [1.0, 2.5])
def test_fast_elbo_equals_the_pyro_trace_elbo_on_token_labels(kl_scale: float) -> None:
    model = _model("plain", num_data=40)
    model.set_kl_scale(kl_scale)
    x, y = _tokens(6).tensors
    pyro_loss, fast_loss, out = _both_engines(model, x, y)
    torch.testing.assert_close(fast_loss, pyro_loss, rtol=1e-5, atol=1e-4)
    # and its likelihood term is the scaled sum over examples and tokens
    reference = -_token_log_lik(out, y).sum() * 40 / 6 + model.kl_divergence()
    torch.testing.assert_close(fast_loss.double(), reference.detach(), rtol=1e-5, atol=1e-4)


def test_the_observation_is_one_event_per_example() -> None:
    model = _model("plain")
    x, y = _tokens(5).tensors
    obs = model.observation(model.predict(x))
    assert obs.batch_shape == (5,) and obs.event_shape == (SEQ,)
    torch.testing.assert_close(obs.log_prob(y).double(), _token_log_lik(model.predict(x), y))
    torch.testing.assert_close(model.nll(model.predict(x), y).double(),
                               -_token_log_lik(model.predict(x), y))


@pytest.mark.parametrize("labels, message", [
    (torch.zeros(32, SEQ + 1, dtype=torch.int64), r"\[N\] or token labels of shape \[N, 8\].*"
                                                  r"shape=\(32, 9\).*\(2, 8, 12\)"),
    (torch.zeros(32, dtype=torch.int64), r"\(2, 8, 12\), one distribution per token.*"
                                         r"\[N, 8\], found shape=\(32,\)"),
    (torch.full((32, SEQ), -100, dtype=torch.int64), r"every token label is the ignore label -100"),
    (torch.zeros(32, SEQ), r"dtype=torch.float32 shape=\(32, 8\)"),
])
def test_labels_that_do_not_fit_the_logits_are_refused(labels: Tensor, message: str) -> None:
    model = _model("plain")
    x = _tokens(32).tensors[0]
    with pytest.raises(ValueError, match=message):
        fit(model, TensorDataset(x, labels), epochs=1, progress=False)


def _with_ignored(y: Tensor) -> Tensor:
    """Token labels with the ignore label -100 where Hugging Face puts it: a prompt of one to
    three tokens per example, and padding at the end of every other example."""
    y = y.clone()
    for n in range(len(y)):
        y[n, : 1 + n % 3] = -100
    y[::2, SEQ - 2:] = -100
    return y


def _kept_log_lik(logits: Tensor, y: Tensor) -> Tensor:
    """The reference: ``sum_t log softmax(logits_nt)[y_nt]`` over the counted tokens."""
    kept = y != -100
    per_token = torch.log_softmax(logits.double(), -1).gather(-1, y.clamp_min(0)[..., None])[..., 0]
    return (per_token * kept).sum(-1)


def test_ignored_tokens_count_in_no_likelihood_metric_or_evidence() -> None:
    """Labels -100 (torch's and Hugging Face's ignore index) are skipped by the likelihood
    of both engines (an example is still one example of the num_data / batch scaling), by
    evaluate's loss and per-token accuracy, and by the posterior predictive."""
    from pyro_prune.predictive import Output, predictive_run

    model = _model("plain", num_data=40)
    model.set_kl_scale(1.0)
    x, y = _tokens(6).tensors
    y = _with_ignored(y)
    kept = y != -100
    out = model.predict(x)
    reference = _kept_log_lik(out, y)
    torch.testing.assert_close(model.nll(out, y).double(), -reference)
    torch.testing.assert_close(model.observation(out).log_prob(y).double(), reference)
    pyro_loss, fast_loss, drawn = _both_engines(model, x, y)
    torch.testing.assert_close(fast_loss, pyro_loss, rtol=1e-4, atol=1e-4)  # Pyro's float32 sums
    scaled = -_kept_log_lik(drawn, y).sum() * 40 / 6 + model.kl_divergence()
    torch.testing.assert_close(fast_loss.double(), scaled.detach(), rtol=1e-5, atol=1e-4)

    data = TensorDataset(x, y)
    metrics = evaluate(model, data)
    assert metrics["loss"] == pytest.approx(float(-reference.mean()), rel=1e-5)
    right = (out.argmax(-1) == y) & kept
    assert metrics["accuracy"] == pytest.approx(float(right.sum() / kept.sum()))
    draws = predictive_run(model, x, draws=4, output=Output.LOGITS, seed=0).samples
    lpd = torch.stack([_kept_log_lik(d, y) for d in draws]).logsumexp(0) - math.log(4)
    torch.testing.assert_close(log_predictive_density(model, data, draws=4, seed=0), lpd)
    bma = torch.log_softmax(draws.double(), -1).logsumexp(0).argmax(-1)
    predictive = evaluate_predictive(model, data, draws=4, seed=0)
    assert predictive["accuracy"] == pytest.approx(float(((bma == y) & kept).sum() / kept.sum()))
    assert predictive["nll"] == pytest.approx(float(-lpd.mean()), rel=1e-9)

    # the ignore label is the model's: another one works the same, and -100 is then a label
    model.ignore_index = -1
    torch.testing.assert_close(model.nll(out, y.masked_fill(~kept, -1)).double(), -reference)
    with pytest.raises(ValueError, match=r"lie in 0\.\.11 .*from -100"):
        evaluate(model, data)


def test_the_running_training_accuracy_is_the_share_of_counted_tokens() -> None:
    """fit's running accuracy counts tokens, as evaluate does: here one example with a single
    counted token that the model gets right and one with six that it gets wrong make 1 of 7
    (not the mean of the examples' shares, 1/2)."""
    torch.manual_seed(0)
    net = TinyLM(VOCAB)
    with torch.no_grad():  # logits = the head's bias: token 3 whatever the input and the noise
        net.head.weight.zero_()
        net.head.bias.zero_()
        net.head.bias[3] = 50.0
    model = bayesianize(net, example_input=_tokens(2).tensors[0])
    x = _tokens(4).tensors[0]
    y = torch.full((4, SEQ), -100)
    y[0, -1] = 3                    # one counted token, right
    y[1, 2:] = 5                    # six counted tokens, wrong
    y[2, :3] = torch.tensor([3, 3, 7])  # three counted, two right
    y[3, 1] = 1                     # one counted, wrong
    kept = y != -100
    by_hand = float(((y == 3) & kept).sum()) / float(kept.sum())
    assert by_hand == pytest.approx(3 / 11)
    # one batch: the epoch's running accuracy is read from the outputs of its only step
    history = fit(model, TensorDataset(x, y), epochs=1, batch_size=4, progress=False, seed=0).history
    assert history[0]["train_accuracy_running"] == pytest.approx(by_hand)
    assert evaluate(model, TensorDataset(x, y))["accuracy"] == pytest.approx(by_hand)


def _counting_with_prompt() -> tuple[TensorDataset, TensorDataset]:
    """256 training and 64 test counting sequences, the first two next tokens ignored."""
    return tuple(TensorDataset(x, y.clone().index_fill_(1, torch.arange(2), -100))  # type: ignore[return-value]
                 for x, y in (_tokens(256, seed=0).tensors, _tokens(64, seed=1).tensors))


def test_too_few_steps_on_the_defaults_are_named_in_the_report() -> None:
    """The tiny GPT-2 on fit's defaults (lr 1e-3, batch 128: 2 steps per epoch on 256
    sequences) for 30 + 10 epochs: 80 Adam steps move every noise posterior's log sigma from
    -5 by about noise_lr = 0.03 per step, so none has widened to its prior (sigma 0.058 of
    5.77), nothing is removed (benchmarks/language_model_steps.py: from 380 steps on), fit
    warns at the start (the 60 steps of the pruning epochs against the 267 needed) and the
    end-of-run line says that the run was too short and what to set."""
    torch.manual_seed(0)
    lm = _gpt2(dropout=0.1)
    train, _ = _counting_with_prompt()
    model = bayesianize(lm, example_input=train.tensors[0][:2])
    with pytest.warns(PruningStepsWarning, match="takes 60 optimizer steps .* fewer than the 267 "):
        report = fit(model, train, epochs=30, progress=False, seed=0, schedule=ContinuousPruning()).report
    assert report.removed == 0 and report.spread is not None and report.spread.narrow
    assert math.exp(-5.0) < report.spread.widest <= math.exp(-5.0 + 80 * 0.03)  # Adam: <= ~noise_lr a step
    line = str(report)
    assert line.startswith("bmrs: removed 0 of 64 linear neurons, 0 of 4 attention heads; nothing removed")
    assert "too few optimizer steps" in line and "smaller batch_size" in line


@pytest.mark.slow
def test_the_default_recipe_prunes_a_hugging_face_language_model_with_ignored_tokens() -> None:
    """A tiny GPT-2 language model on counting sequences (the next token is the current one
    plus one), a prompt of two tokens ignored (-100): fit with ContinuousPruning() and enough
    optimizer steps (batch 16: 16 per epoch; at the default batch 128 the 30 epochs are too
    few, see the test above) removes heads (the next token depends on the current one only)
    and MLP units, keeps the task solved, and converts."""
    torch.manual_seed(0)
    lm = _gpt2(dropout=0.1)
    train, test = _counting_with_prompt()
    model = bayesianize(lm, example_input=train.tensors[0][:2])
    before = evaluate(model, test)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PruningStepsWarning)  # 480 steps: enough, not warned about
        result = fit(model, train, epochs=30, lr=1e-2, batch_size=16, progress=False, schedule=ContinuousPruning())
    after = evaluate(model, test)
    assert after["accuracy"] > 0.95 > before["accuracy"] and after["loss"] < 0.1 * before["loss"]
    removed = {"heads" if name.endswith("head_gate") else "mlp": int((~g.kept).sum())
               for name, g in model.gates().items()}
    assert removed["heads"] >= 2 and removed["mlp"] >= 16, (removed, result.report)
    model.eval()
    small = to_deterministic(model)
    assert count_params(small) < count_params(model.net)
    x = test.tensors[0]
    torch.testing.assert_close(small(x), model.predict(x), rtol=1e-4, atol=1e-4)
