"""The validation set behind calibration, split over ranks: every rank scores a contiguous slice and
rank 0 concatenates them, so the slices must cover every row once and in order (the 2-worker
gather itself is checked end to end in test_train_e2e.py)."""

import numpy as np
import pytest

from tests.train.tiny import tiny_split
from vehicle_ray.train.learner import build_dataloaders, build_learner
from vehicle_ray.train.sharding import rank_rows
from vehicle_ray.train.validation import validation_set
from vehicle_ray.tta import TTASettings


@pytest.mark.parametrize("n", [0, 1, 5, 80, 81])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_rank_rows_cover_every_row_once_in_rank_order(n, world_size):
    slices = [rank_rows(n, rank, world_size) for rank in range(world_size)]
    assert [row for rows in slices for row in rows] == list(range(n))
    assert max(map(len, slices)) - min(map(len, slices)) <= 1


def test_slices_of_the_validation_set_concatenate_to_the_whole(tmp_path):
    data, recipe, valid_idx = tiny_split(tmp_path, train=40, seed=3)
    learn = build_learner(build_dataloaders(data, recipe, valid_idx), recipe)
    tta = TTASettings(n=2, beta=0.25)
    whole = validation_set(learn, tta)
    parts = [validation_set(learn, tta, rows=rank_rows(len(valid_idx), rank, 3)) for rank in range(3)]
    assert len(whole.targets) == len(valid_idx) == sum(len(p.targets) for p in parts)
    assert (np.concatenate([p.targets for p in parts]) == whole.targets).all()
    # the plain pass has no random augmentation: the same probabilities whichever slice scored a row
    np.testing.assert_allclose(np.concatenate([p.plain for p in parts]), whole.plain, atol=1e-5)
    empty = validation_set(learn, tta, rows=range(0))  # a rank with no rows (more ranks than images)
    assert empty.probs.shape == empty.plain.shape == (0, 2) and empty.targets.shape == (0,)
