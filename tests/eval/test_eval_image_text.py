"""annoboot.eval.image_text: retrieval recall and zero-shot accuracy."""

import torch

from annoboot.eval.image_text import retrieval_recall, zero_shot_accuracy


def test_retrieval_and_zero_shot_metrics_on_constructed_embeddings():
    images = torch.eye(4)
    texts = torch.eye(4)[[0, 1, 3, 2]]  # pairs 2 and 3 swapped
    r = retrieval_recall(images, texts, ks=(1, 2))
    assert r["image_to_text_r1"] == 50.0 and r["text_to_image_r1"] == 50.0
    assert r["image_to_text_r2"] == 100.0  # the swapped pairs rank second
    classifier = torch.eye(3)
    assert zero_shot_accuracy(torch.eye(3)[[0, 1, 2, 2]], torch.tensor([0, 1, 2, 0]), classifier) == 75.0
