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


def test_zero_shot_maps_each_class_to_its_own_prompts(monkeypatch):
    """Prompts are class-major (class 0's templates, then class 1's, ...) and averaged per class.
    A text embedding that names its class (one-hot on the class word, plus a per-template offset
    that the mean over templates cancels) must give row c = class c. Caught break: the prompt
    embeddings viewed template-major (classes mixed in each row)."""
    import annoboot.eval.image_text as image_text

    names = ["cat", "dog", "T-shirt/top"]  # the last one is prompted as "T-shirt or top"
    words = ["cat", "dog", "T-shirt or top"]
    templates = ["a photo of a {}.", "a drawing of a {}.", "{}"]

    def embed_texts(method, prompts, device, batch_size=512):
        rows = []
        for prompt in prompts:
            (template,) = [i for i, t in enumerate(templates) if t.format(next(w for w in words if w in prompt)) == prompt]
            row = torch.zeros(4)
            row[words.index(next(w for w in words if w in prompt))] = 3.0
            row[3] = [-1.0, 0.0, 1.0][template]  # cancels in the mean over templates
            rows.append(row)
        return torch.stack(rows)

    monkeypatch.setattr(image_text, "embed_texts", embed_texts)
    classifier = image_text.zero_shot_classifier(None, names, templates, torch.device("cpu"))
    assert torch.allclose(classifier, torch.eye(3, 4), atol=1e-6)
    labels = torch.tensor([2, 0, 1, 1])
    assert zero_shot_accuracy(torch.eye(3, 4)[labels], labels, classifier) == 100.0
