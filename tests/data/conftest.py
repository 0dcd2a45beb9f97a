"""Fixtures shared by the data tests."""

import pytest
from helpers import photo


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i in range(20):
        photo(i).save(root / ("sub" if i % 2 else "") / f"img{i:02d}.{'jpg' if i % 3 else 'png'}")
        if i % 4 == 0:
            (root / ("sub" if i % 2 else "") / f"img{i:02d}.txt").write_text(f"a photo number {i}\nsecond line")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "empty.png").write_bytes(b"")
    return root
