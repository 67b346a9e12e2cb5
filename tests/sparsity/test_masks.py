import pytest
import torch

from slimtune.errors import ConfigError
from slimtune.sparsity.masks import (check_exact, lowest_k_mask, matrix_mask, n_pruned, nm_mask,
                                     parse_pattern, row_mask, satisfies_nm, select_mask)


def test_parse_pattern():
    assert parse_pattern("unstructured") is None
    assert parse_pattern("2:4") == (2, 4)
    assert parse_pattern(" 4 : 8 ") == (4, 8)
    for bad in ("2-4", "4:2", "0:4", "4:4", "x", ""):
        with pytest.raises(ConfigError, match="pattern"):
            parse_pattern(bad)


def test_n_pruned_is_robust_to_float_noise():
    assert n_pruned(100, 0.29) == 29  # 100 * 0.29 = 28.999999999999996
    assert n_pruned(576, 0.5) == 288
    assert n_pruned(10, 0.0) == 0
    assert n_pruned(7, 0.5) == 3


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.77])
def test_row_mask_exact_per_row_even_with_ties(p):
    torch.manual_seed(0)
    scores = torch.randint(0, 3, (16, 37)).float()  # many ties
    keep = row_mask(scores, p)
    assert ((~keep).sum(1) == n_pruned(37, p)).all()
    # every pruned score is <= every kept score of its row
    for r in range(16):
        if (~keep[r]).any() and keep[r].any():
            assert scores[r][~keep[r]].max() <= scores[r][keep[r]].min()


def test_matrix_mask_exact_over_matrix():
    scores = torch.ones(8, 10)  # all tied
    keep = matrix_mask(scores, 0.35)
    assert int((~keep).sum()) == n_pruned(80, 0.35)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_nm_mask_keeps_n_of_every_m(n, m):
    torch.manual_seed(1)
    scores = torch.rand(6, 32)
    keep = nm_mask(scores, n, m)
    groups = keep.view(6, 32 // m, m)
    assert (groups.sum(2) == n).all()
    s = scores.view(6, 32 // m, m)
    kept_min = torch.where(groups, s, torch.inf).min(2).values
    pruned_max = torch.where(~groups, s, -torch.inf).max(2).values
    assert (pruned_max <= kept_min).all()
    assert satisfies_nm(scores * keep, n, m)


def test_nm_mask_rejects_width_not_multiple_of_m():
    with pytest.raises(ConfigError, match="multiple of 4"):
        nm_mask(torch.rand(3, 10), 2, 4)


def test_lowest_k_mask_along_dim0():
    scores = torch.tensor([[3.0, 1.0], [1.0, 2.0], [2.0, 3.0]])
    keep = lowest_k_mask(scores, 1, dim=0)
    assert keep.tolist() == [[True, False], [False, True], [True, True]]


def test_select_mask_scopes_and_check_exact():
    torch.manual_seed(2)
    w = torch.randn(8, 16)
    row = w * select_mask(w.abs(), 0.5, None, "row")
    check_exact(row, 0.5, None, "row")
    mat = w * select_mask(w.abs(), 0.5, None, "matrix")
    check_exact(mat, 0.5, None, "matrix")
    with pytest.raises(AssertionError):
        check_exact(w, 0.5, None, "row")
    with pytest.raises(ConfigError, match="scope"):
        select_mask(w, 0.5, None, "column")
