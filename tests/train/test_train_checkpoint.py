"""annoboot.train.checkpoint: atomic writes and pruning."""

from annoboot.train.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000002.pt", "ckpt-00000003.pt"]
    # A half-written file from a killed run is never taken as the latest.
    (tmp_path / "checkpoints" / "ckpt-00000004.pt.tmp").write_bytes(b"garbage")
    assert latest_checkpoint(tmp_path).name == "ckpt-00000003.pt"
