"""annoboot.objectives.dino: the loss, centring and sharpening, and the collapse monitors."""

import math

import pytest
import torch

from annoboot.objectives import dino_loss, entropy, kl_to_uniform, teacher_distribution, update_center


def test_dino_loss_matches_a_hand_computed_case():
    # 2 global + 1 local student views of one image, K = 2, student temperature 1.
    ln3 = math.log(3)
    student = torch.tensor([[[0.0, 0.0]], [[ln3, 0.0]], [[0.0, ln3]]])  # softmax: (.5,.5) (.75,.25) (.25,.75)
    teacher = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]]])
    pairs = [
        -math.log(0.75),  # teacher view 0 -> student view 1
        -math.log(0.25),  # teacher view 0 -> student view 2
        math.log(2),  # teacher view 1 -> student view 0
        -(0.5 * math.log(0.25) + 0.5 * math.log(0.75)),  # teacher view 1 -> student view 2
    ]  # (0, 0) and (1, 1) are the same crop: left out
    expected = sum(pairs) / len(pairs)
    assert dino_loss(student, teacher, student_temp=1.0).item() == pytest.approx(expected, rel=1e-6)
    # The student temperature divides the logits; the loss is a mean over the batch.
    assert dino_loss(2 * student, teacher, student_temp=2.0).item() == pytest.approx(expected, rel=1e-6)
    assert dino_loss(student.repeat(1, 3, 1), teacher.repeat(1, 3, 1), 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_centre_is_an_ema_of_the_teachers_batch_mean():
    logits = torch.tensor([[1.0, 3.0], [3.0, 5.0]])  # batch mean (2, 4)
    center = update_center(torch.zeros(2), logits, momentum=0.9)
    assert torch.allclose(center, torch.tensor([0.2, 0.4]))
    center = update_center(center, logits.view(2, 1, 2), momentum=0.9)  # (views, batch, K) is fine too
    assert torch.allclose(center, torch.tensor([0.9 * 0.2 + 0.1 * 2, 0.9 * 0.4 + 0.1 * 4]))


def test_teacher_distribution_is_centred_then_sharpened():
    logits = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    probs = teacher_distribution(logits, center=torch.tensor([1.0, 2.0]), teacher_temp=0.5)
    expected = torch.softmax(torch.tensor([[0.0, 2.0], [2.0, 0.0]]), dim=-1)
    assert torch.allclose(probs, expected)
    sharper = teacher_distribution(logits, torch.tensor([1.0, 2.0]), teacher_temp=0.1)
    assert (entropy(sharper) < entropy(probs)).all()


def test_collapse_monitors_read_uniform_and_one_hot():
    k = 8
    uniform, one_hot = torch.full((k,), 1 / k), torch.eye(k)[0]
    assert entropy(uniform).item() == pytest.approx(math.log(k))
    assert entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_uniform(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_uniform(one_hot).item() == pytest.approx(math.log(k))


def test_entropy_is_per_row_in_nats_worked_by_hand():
    """[0.5, 0.5] has ln 2 nats, a one-hot row none. Caught break: summing over every axis."""
    values = entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    assert values.shape == (2,) and torch.allclose(values, torch.tensor([math.log(2), 0.0]))
