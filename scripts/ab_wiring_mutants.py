"""Wiring mutants of the AB method files (issue 34 item 6): breaks a reviewer would expect to
matter (a view, order, temperature, centre or move handed to the wrong place), each applied to a
copy of src/ and run against the fast tests of the methods and the trainer. mutmut's run
(scripts/mutation.sh) covers the maths' files; these method files' tests train real steps, so
this list of hand-chosen mutants stands in for it there. Prints each mutant, killed or survived,
and the count.

    python scripts/ab_wiring_mutants.py        # about 15-20 min on 2 cores (24 mutants)
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["-m", "not slow", "tests/methods", "tests/train/test_train_trainer.py"]
S, D, C = "annoboot/methods/ab_simclr.py", "annoboot/methods/ab_dino.py", "annoboot/methods/ab_clip.py"
MUTANTS = [
 (S, "pooled = torch.cat([ann_pooled[:num_annotations], target_pooled])", "pooled = torch.cat([ann_pooled[num_annotations:], target_pooled])"),
 (S, "target_network.td_targets(ann_views[:num_annotations], target_views, moves)", "target_network.td_targets(ann_views[num_annotations:], target_views, moves)"),
 (S, "self.ab_annotation_head(ann_pooled[:num_annotations]))", "self.ab_annotation_head(ann_pooled[num_annotations:]))"),
 (S, "moves = self.value_function.moves_between(source_boxes, boxes[:, sources:])", "moves = self.value_function.moves_between(boxes[:, sources:], source_boxes)"),
 (S, "                with frozen_statistics(self):\n                    td_targets", "                if True:\n                    td_targets"),
 (S, "rows = (step * keys.shape[0] + torch.arange(", "rows = (0 * keys.shape[0] + torch.arange("),
 (S, "return min(self.cfg.method.annotation_queue, step * per_step)", "return min(self.cfg.method.annotation_queue, (step + 1) * per_step)"),
 (S, "self._to_enqueue = (self._step_annotations, keys.detach())", "self._to_enqueue = (keys.detach(), keys.detach())"),
 (S, "reward = annotation_distribution(z[num_annotations:], annotations, m.temperature)", "reward = annotation_distribution(z[num_annotations:], annotations, 1.0)"),
 (S, "annotations = torch.cat([annotations, queued.to(annotations.dtype)])", "annotations = torch.cat([queued.to(annotations.dtype), annotations])"),
 (S, "base_loss = nt_xent(z1, z2, m.temperature", "base_loss = nt_xent(z1, z1.roll(1, 0), m.temperature"),
 (S, 'self.uses_target = cfg.method.target_network == "ema"', 'self.uses_target = cfg.method.target_network != "ema"'),
 (S, "logits = self.value_function.logits(out.tokens[2 * num_annotations :], moves, keys)", "logits = self.value_function.logits(out.tokens[2 * num_annotations :], moves, keys.flip(0))"),
 (D, "reward = teacher_distribution(logits[num_global:], self.center, teacher_temp)", "reward = teacher_distribution(logits[num_global:], torch.zeros_like(self.center), teacher_temp)"),
 (D, "reward = teacher_distribution(logits[num_global:], self.center, teacher_temp)", "reward = teacher_distribution(logits[num_global:], self.center, self.cfg.method.student_temp)"),
 (D, "logits = self.value_function.logits(out.tokens[num_global:], moves, self.ab_prototypes)", "logits = self.value_function.logits(out.tokens[num_global:], moves.transpose(1, 2), self.ab_prototypes)"),
 (D, "lambda: self.ab_prototypes)", "lambda: self.ab_prototypes.flip(0))"),
 (D, "base_loss, metrics = self.dino_objective(out.pooled[:num_global], student_local, teacher_logits, step)", "base_loss, metrics = self.dino_objective(out.pooled[:num_global].flip(0), student_local, teacher_logits, step)"),
 (C, "keys = distributed.gather_with_grad(self.ab_text_head(text_features))", "keys = distributed.gather_with_grad(self.ab_text_head(text_features)).flip(0)"),
 (C, "reward = caption_distribution(self.embed_images(boot_pooled), captions, self.logit_scale())", "reward = caption_distribution(self.embed_images(boot_pooled), captions, 1.0)"),
 (C, "captions = distributed.gather(self.text_projection(text_features))", "captions = distributed.gather(self.ab_text_head(text_features))"),
 (C, "moves = self.value_function.moves(boxes)", "moves = self.value_function.moves(boxes).transpose(1, 2)"),
 (C, "self.embed_images(out.pooled[:num_annotations]), self.text_projection(text_features), scale", "self.embed_images(out.pooled[:num_annotations]), self.text_projection(text_features).roll(1, 0), scale"),
 (C, "lambda: distributed.gather(self.ab_text_head(text_features)))", "lambda: distributed.gather(self.ab_text_head(text_features)).flip(0))"),
]


def main() -> int:
    killed = 0
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src)
        env = dict(os.environ, PYTHONPATH=str(src))
        for path, old, new in MUTANTS:
            original = (src / path).read_text()
            if original.count(old) != 1:
                raise SystemExit(f"{path}: the code this mutant changes is gone or repeated: {old!r}")
            (src / path).write_text(original.replace(old, new))
            try:
                run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:xdist", "-p", "no:cacheprovider",
                                      *TESTS], cwd=ROOT, env=env, capture_output=True, text=True)
            finally:
                (src / path).write_text(original)
            killed += run.returncode != 0
            failed = next((line for line in run.stdout.splitlines() if line.startswith("FAILED")), "")
            print(f"{'killed  ' if run.returncode else 'SURVIVED'} {Path(path).name}: {new.strip()[:80]}  {failed[:100]}",
                  flush=True)
    print(f"{killed} of {len(MUTANTS)} killed")
    return 0 if killed == len(MUTANTS) else 1


if __name__ == "__main__":
    sys.exit(main())
