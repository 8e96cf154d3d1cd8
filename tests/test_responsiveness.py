"""ResponsivenessTracker against the pseudo-code of docs/design.md, step by step (Eq. 7-8)."""

import math

import pytest
import torch

from hanorec_trl import ResponsivenessTracker
from hanorec_trl.responsiveness import trimmed_mean


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


class PseudoCode:
    """docs/design.md's pseudo-code transcribed literally, on plain Python floats."""

    def __init__(self, mu=0.9, eps=1e-6, warmup=10, eta_min=None, eta_max=None):
        self.s, self.m_data, self.t = 0.0, 0.0, 0
        self.mu, self.eps, self.warmup, self.eta_min, self.eta_max = mu, eps, warmup, eta_min, eta_max

    def update(self, R):
        a = sum(abs(r) for r in R) / len(R)
        if a < self.eps:
            return 1.0
        self.s = a if self.t == 0 else self.mu * self.s + (1 - self.mu) * a
        Rbar = sorted(r / self.s for r in R)
        m_B = sum(Rbar[1:-1]) / (len(Rbar) - 2) if len(Rbar) >= 3 else sum(Rbar) / len(Rbar)
        if self.t == 0:
            self.m_data = m_B
        eta = sigmoid(m_B) / sigmoid(self.m_data)
        self.m_data = self.mu * self.m_data + (1 - self.mu) * m_B
        self.t += 1
        if self.t <= self.warmup:
            return 1.0
        if self.eta_min is not None:
            eta = max(eta, self.eta_min)
        if self.eta_max is not None:
            eta = min(eta, self.eta_max)
        return eta


BATCHES = [
    [0.0, 0.0, 0.0],  # policy == reference: no signal
    [0.02, 0.05],  # first informative batch (batch of 2)
    [0.3],  # batch of 1
    [-0.1, 0.4, 0.05, 0.2],  # sign change inside a batch
    [-0.3, -0.2, -0.25],  # all negative
    [1e-9, -1e-9],  # below eps again: state unchanged
    [0.5, 0.9, -0.2, 0.1, 0.3, 0.7],
    [0.05, 0.04, 0.06],
    [2.0, 1.5],
    [0.0, 0.01, 0.02, 0.03, 5.0],  # an outlier that the trimmed mean drops
]


@pytest.mark.parametrize("warmup", [0, 1, 3])
@pytest.mark.parametrize("bounds", [(None, None), (0.8, 1.2)])
def test_matches_pseudocode_step_by_step(warmup, bounds):
    reference = PseudoCode(warmup=warmup, eta_min=bounds[0], eta_max=bounds[1])
    tracker = ResponsivenessTracker(warmup=warmup, eta_min=bounds[0], eta_max=bounds[1])
    for step, batch in enumerate(BATCHES):
        expected = reference.update(batch)
        got = tracker.update(torch.tensor(batch, dtype=torch.float64))
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), f"step {step}, batch {batch}"
        assert tracker.steps == reference.t
        assert tracker.scale == pytest.approx(reference.s, rel=1e-12)
        assert tracker.data_mean == pytest.approx(reference.m_data, rel=1e-12, abs=1e-15)


def test_first_informative_batch_gives_one_and_zero_batch_changes_nothing():
    tracker = ResponsivenessTracker(warmup=0)
    assert tracker.update(torch.zeros(4)) == 1.0
    assert tracker.steps == 0 and tracker.scale == 0.0
    assert tracker.update(torch.tensor([0.3, -0.1, 0.7])) == 1.0  # eta = sigmoid(m)/sigmoid(m)
    assert tracker.steps == 1
    # a batch above the data's average gets eta > 1, one below gets eta < 1
    assert tracker.update(torch.tensor([2.0, 2.5, 3.0])) > 1.0
    assert tracker.update(torch.tensor([-2.0, -2.5, -3.0])) < 1.0


def test_warmup_holds_eta_at_one():
    tracker = ResponsivenessTracker(warmup=2)
    etas = [tracker.update(torch.tensor(b)) for b in ([0.1, 0.2], [1.0, 2.0], [3.0, 4.0], [-3.0, -4.0])]
    assert etas[:2] == [1.0, 1.0] and etas[2] != 1.0 and etas[3] != 1.0


def test_batch_mode_is_released_formula():
    tracker = ResponsivenessTracker(mode="batch", warmup=0)
    R = torch.tensor([0.1, 0.4, 0.2, 0.9], dtype=torch.float64)
    expected = sigmoid(((0.2 + 0.4) / 2) / (R.mean().item())) / sigmoid(1.0)
    assert tracker.update(R) == pytest.approx(expected, rel=1e-12)
    assert tracker.update(torch.tensor([1e-9, -1e-9])) == 1.0  # mean ~ 0: no signal


def released_eta(R):
    """The authors' released formula on plain floats: sigmoid(trimmed mean of R / mean(R)) / sigmoid(1)."""
    mean = sum(R) / len(R)
    normalised = sorted(r / mean for r in R)
    trimmed = normalised[1:-1] if len(normalised) >= 3 else normalised
    return sigmoid(sum(trimmed) / len(trimmed)) / sigmoid(1.0)


def test_batch_mode_warmup_counts_informative_batches():
    """warmup=2 in mode="batch": exactly 1.0 on the first two informative batches, the formula from the third on;
    batches with |mean(R)| < eps return 1.0 and do not count."""
    tracker = ResponsivenessTracker(mode="batch", warmup=2)
    batches = [
        [0.1, 0.4, 0.2, 0.9],  # informative 1
        [1e-9, -1e-9],  # mean ~ 0: skipped
        [0.3, -0.1, 0.5],  # informative 2
        [0.0, 0.0, 0.0],  # skipped
        [0.1, 0.4, 0.2, 0.9],  # informative 3: the formula (not 1.0)
        [2.0, 0.5, 0.1, 0.3, 0.25],  # informative 4
    ]
    etas, steps = [], []
    for batch in batches:
        etas.append(tracker.update(torch.tensor(batch, dtype=torch.float64)))
        steps.append(tracker.steps)
    assert steps == [1, 1, 2, 2, 3, 4]
    assert etas[:4] == [1.0, 1.0, 1.0, 1.0]
    assert etas[4] != 1.0 and etas[4] == pytest.approx(released_eta(batches[4]), rel=1e-12)
    assert etas[5] != 1.0 and etas[5] == pytest.approx(released_eta(batches[5]), rel=1e-12)
    assert tracker.last_eta == etas[5]


@pytest.mark.parametrize("mode", ["ema", "batch"])
def test_near_zero_batches_do_not_advance_steps(mode):
    """Below eps (|R| for "ema", |mean(R)| for "batch") eta is 1.0 and the state, step count included, is unchanged;
    so the warm-up counts informative batches only."""
    tracker = ResponsivenessTracker(mode=mode, warmup=1)
    quiet = {"ema": [1e-9, -1e-9, 5e-8], "batch": [0.3, -0.3, 1e-9]}[mode]  # "batch": large gaps, mean ~ 0
    for _ in range(3):
        assert tracker.update(torch.tensor(quiet, dtype=torch.float64)) == 1.0
    assert tracker.steps == 0 and tracker.scale == 0.0 and tracker.data_mean == 0.0
    assert tracker.update(torch.tensor([0.1, 0.4, 0.2, 0.9], dtype=torch.float64)) == 1.0  # informative 1: warm-up
    state = tracker.state_dict()
    assert state["steps"] == 1
    assert tracker.update(torch.tensor(quiet, dtype=torch.float64)) == 1.0
    assert tracker.state_dict() == {**state, "last_eta": 1.0}  # nothing but last_eta moved
    eta = tracker.update(torch.tensor([2.0, 2.5, 3.0, 0.1], dtype=torch.float64))  # informative 2: past warm-up
    assert tracker.steps == 2 and eta != 1.0


def test_trimmed_mean():
    assert trimmed_mean(torch.tensor([5.0])) == 5.0
    assert trimmed_mean(torch.tensor([1.0, 3.0])) == 2.0
    assert trimmed_mean(torch.tensor([100.0, 1.0, 2.0, 3.0, -50.0])) == 2.0


def test_state_dict_round_trip():
    a = ResponsivenessTracker(warmup=1)
    for batch in BATCHES[:5]:
        a.update(torch.tensor(batch))
    b = ResponsivenessTracker(warmup=1)
    b.load_state_dict(a.state_dict())
    for batch in BATCHES[5:]:
        assert a.update(torch.tensor(batch)) == b.update(torch.tensor(batch))
    with pytest.raises(ValueError, match="mode"):
        ResponsivenessTracker(mode="batch").load_state_dict(a.state_dict())


def test_bad_input():
    with pytest.raises(ValueError, match="non-finite reward gaps at batch positions \\[1\\]"):
        ResponsivenessTracker().update(torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="empty"):
        ResponsivenessTracker().update(torch.tensor([]))
    with pytest.raises(ValueError, match="mode"):
        ResponsivenessTracker(mode="median")
    with pytest.raises(ValueError, match="eta_min"):
        ResponsivenessTracker(eta_min=2.0, eta_max=1.0)
