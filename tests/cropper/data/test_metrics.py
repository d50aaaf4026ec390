"""The benchmark metrics: hand-worked cases, and the official GAICD loop transcribed."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import pearsonr, spearmanr

from cropper.data import metrics
from cropper.data.metrics import (
    bde,
    best_crops,
    box_metrics,
    iou,
    mean_box_metrics,
    mean_score_metrics,
    photo_score_metrics,
    score_keys,
)

E = math.exp

# Six crops: MOS ranks them 0..5 in annotation order; crops 3 and 4 tie at the 5th place.
# The predictions put crop 5 (the worst) first, then 3, 4, 1, 2, 0.
TIED_MOS = [5.0, 4.0, 3.0, 2.0, 2.0, 1.0]
TIED_GUESS = [0.1, 0.5, 0.2, 0.9, 0.8, 0.95]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # N = 5: the 5th best MOS is 2, so crops 3 and 4 are hits, crop 5 is not.
        ("acc1_5", 0.0),
        ("acc2_5", 1 / 2),
        ("acc3_5", 2 / 3),
        ("acc4_5", 3 / 4),
        # N = 10 with six crops: the worst crop is the N-th best, so every crop is a hit.
        ("acc1_10", 1.0),
        ("acc4_10", 1.0),
        # wAcc: MOS ranks of the top K, sorted; the j-th counts exp(-(r - j) / N) if r < N.
        ("wacc1_5", 0.0),  # ranks [5]
        ("wacc2_5", E(-0.6) / 2),  # ranks [3, 5]
        ("wacc3_5", 2 * E(-0.6) / 3),  # ranks [3, 4, 5]
        ("wacc4_5", (E(-0.2) + 2 * E(-0.4)) / 4),  # ranks [1, 3, 4, 5]
        ("wacc1_10", E(-0.5)),
        ("wacc2_10", (E(-0.3) + E(-0.4)) / 2),
        ("wacc3_10", E(-0.3)),
        ("wacc4_10", (E(-0.1) + 3 * E(-0.2)) / 4),
    ],
)
def test_acc_and_wacc_of_a_hand_worked_photo_with_ties(key: str, expected: float) -> None:
    assert photo_score_metrics(TIED_MOS, TIED_GUESS)[key] == pytest.approx(expected)


def test_a_tie_past_the_nth_place_is_an_acc_hit_but_no_wacc_hit() -> None:
    # Crop 5 ties the 5th best MOS but is 6th in the stable MOS order: rank 5, not < 5.
    got = photo_score_metrics([5, 4, 3, 2, 2, 2], [0, 0, 0, 0, 0, 1])
    assert got["acc1_5"] == 1.0 and got["wacc1_5"] == 0.0
    assert got["wacc1_10"] == pytest.approx(E(-0.5))


def test_tied_predictions_keep_annotation_order() -> None:
    # All predictions equal: the top K are the first K crops, as the official stable sort.
    got = photo_score_metrics([1, 2, 3, 4, 5, 6], [0.5] * 6)
    assert got["acc1_5"] == 0.0 and got["acc2_5"] == 0.5  # crops 0, 1: ranks 5, 4
    assert got["srcc"] == 0.0 and got["pcc"] == 0.0  # constant predictions: no correlation


@pytest.mark.parametrize(
    ("guess", "srcc", "pcc"),
    [
        ([1, 2, 3, 4, 5, 6], 1.0, 1.0),
        ([6, 5, 4, 3, 2, 1], -1.0, -1.0),
        ([1, 4, 9, 16, 25, 36], 1.0, pearsonr([1, 2, 3, 4, 5, 6], [1, 4, 9, 16, 25, 36])[0]),
        ([3, 3, 3, 3, 3, 3], 0.0, 0.0),
    ],
)
def test_srcc_and_pcc(guess, srcc, pcc) -> None:
    got = photo_score_metrics([1, 2, 3, 4, 5, 6], guess)
    assert got["srcc"] == pytest.approx(srcc) and got["pcc"] == pytest.approx(pcc)


def test_perfect_predictions_score_1_everywhere_and_reversed_srcc_minus_1() -> None:
    mos = [4.1, 2.0, 3.3, 4.8, 1.2, 3.9, 2.7, 4.4, 3.0, 1.9, 2.2, 4.0]
    perfect = photo_score_metrics(mos, mos)
    assert all(perfect[key] == pytest.approx(1.0) for key in perfect)
    reversed_ = photo_score_metrics(mos, [-m for m in mos])
    assert reversed_["srcc"] == pytest.approx(-1.0) and reversed_["acc1_5"] == 0.0


def test_mean_score_metrics_averages_photos_and_adds_the_k_means() -> None:
    rows = [photo_score_metrics(TIED_MOS, TIED_GUESS), photo_score_metrics(TIED_MOS, TIED_MOS)]
    mean = mean_score_metrics(rows)
    assert list(mean) == score_keys()
    assert mean["acc2_5"] == pytest.approx((0.5 + 1) / 2)
    per_k = [mean[f"acc{k}_5"] for k in (1, 2, 3, 4)]
    assert mean["acc5"] == pytest.approx(sum(per_k) / 4)
    assert mean["acc5"] == pytest.approx(((0 + 1 / 2 + 2 / 3 + 3 / 4) / 4 + 1) / 2)


def test_score_keys_are_the_issue_keys_in_order() -> None:
    accs = [f"acc{k}_5" for k in (1, 2, 3, 4)] + ["acc5"]
    accs += [f"acc{k}_10" for k in (1, 2, 3, 4)] + ["acc10"]
    assert score_keys() == accs + ["w" + key for key in accs] + ["srcc", "pcc"]


@pytest.mark.parametrize(
    ("mos", "guess", "match"),
    [
        ([1, 2, 3, 4], [1, 2, 3], "3 predicted scores for 4 crops"),
        ([1, 2, 3], [1, 2, 3], "at least 4"),
        ([1, 2, 3, math.nan], [1, 2, 3, 4], "finite"),
        ([1, 2, 3, 4], [1, 2, math.inf, 4], "finite"),
        ([1, 2, 3, 4], ["a", "b", "c", "d"], "numbers"),
        ([1, 2, 3, 4], [[1, 2], [3, 4]], "flat list"),
    ],
)
def test_bad_score_input_is_a_value_error(mos, guess, match) -> None:
    with pytest.raises(ValueError, match=match):
        photo_score_metrics(mos, guess)


def test_averaging_nothing_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no photos"):
        mean_score_metrics([])
    with pytest.raises(ValueError, match="no photos"):
        mean_box_metrics([])


# -- boxes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
        ((0, 0, 10, 10), (0, 0, 20, 20), 100 / 400),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges
        ((0, 0, 10, 10), (30, 30, 40, 40), 0.0),
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # no area at all
        ((2.5, 0, 7.5, 4), (0, 0, 10, 4), 0.5),
    ],
)
def test_iou(a, b, expected) -> None:
    assert iou(a, b) == pytest.approx(expected) and iou(b, a) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("pred", "truth", "size", "expected"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), (100, 50), 0.0),
        ((0, 0, 10, 10), (10, 0, 20, 10), (100, 50), (10 / 100 + 10 / 100) / 4),
        ((0, 0, 10, 10), (0, 5, 10, 15), (100, 50), (5 / 50 + 5 / 50) / 4),
        ((0, 0, 100, 50), (10, 5, 90, 45), (100, 50), (0.1 + 0.1 + 0.1 + 0.1) / 4),
    ],
)
def test_bde(pred, truth, size, expected) -> None:
    assert bde(pred, truth, size) == pytest.approx(expected)


def test_box_metrics_take_both_figures_from_the_truth_of_highest_iou() -> None:
    pred = (0, 0, 10, 10)
    wide = (0, 0, 20, 10)  # iou 0.5, displacement 10/100: bde 0.025
    shifted = (2, 2, 12, 12)  # iou 64/136, displacement 8/100: bde 0.02, the least
    got = box_metrics(pred, [wide, shifted], (100, 100))
    # One box: the widest's bde, not the least bde of another box (which read 0.02).
    assert got == {"iou": pytest.approx(0.5), "bde": pytest.approx(0.025)}
    assert box_metrics(pred, [shifted, wide], (100, 100)) == got  # the order does not matter
    assert box_metrics(pred, [pred], (100, 100)) == {"iou": 1.0, "bde": 0.0}
    with pytest.raises(ValueError, match="no ground-truth box"):
        box_metrics(pred, [], (100, 100))


def test_a_tie_in_iou_goes_to_the_truth_of_least_displacement() -> None:
    pred = (0, 0, 10, 10)
    wide = (0, 0, 20, 10)  # iou 100/200 = 0.5, displacement 0.10
    half = (0, 0, 5, 10)  # iou 50/100 = 0.5, displacement 0.05: tied, and closer
    assert box_metrics(pred, [wide, half], (100, 100)) == {
        "iou": pytest.approx(0.5),
        "bde": pytest.approx(0.05 / 4),
    }
    # The least displacement is sought among all truths, as the reference code does: on a
    # tall photo a flat box moves y edges cheaply, so it is the closest at a lower IoU;
    # it breaks no tie, and the first of the tied boxes stands, not the closer of them.
    flat = (0, 0, 10, 2)  # iou 0.2, displacement 8/1000
    got = box_metrics(pred, [wide, half, flat], (100, 1000))
    assert got == {"iou": pytest.approx(0.5), "bde": pytest.approx((10 / 100) / 4)}


def test_mean_box_metrics() -> None:
    rows = [{"iou": 1.0, "bde": 0.0}, {"iou": 0.5, "bde": 0.1}]
    assert mean_box_metrics(rows) == {"iou": 0.75, "bde": pytest.approx(0.05)}


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([4.0, 5.0, 5.0], ["b", "c"]),
        ([5.0, 4.0, 3.0], ["a"]),
        ([2.0, 2.0, 2.0], ["a", "b", "c"]),
        (None, ["a", "b", "c"]),
    ],
)
def test_best_crops_keep_every_tie(scores, expected) -> None:
    assert best_crops(["a", "b", "c"], scores) == expected


# -- the official GAICD loop, transcribed ----------------------------------------------------


def official(MOS: list[float], out: list[float]) -> dict[str, float]:  # noqa: N803
    """GAICD's Acc and wAcc loop for one photo, written as its authors wrote it."""
    id_MOS = sorted(range(len(MOS)), key=lambda k: MOS[k], reverse=True)  # noqa: N806
    id_out = sorted(range(len(out)), key=lambda k: out[k], reverse=True)
    res: dict[str, float] = {}
    for k in range(4):
        temp_acc_4_5 = 0.0
        temp_acc_4_10 = 0.0
        for j in range(k + 1):
            if MOS[id_out[j]] >= MOS[id_MOS[4]]:
                temp_acc_4_5 += 1.0
            if MOS[id_out[j]] >= MOS[id_MOS[9]]:
                temp_acc_4_10 += 1.0
        res[f"acc{k + 1}_5"] = temp_acc_4_5 / (k + 1.0)
        res[f"acc{k + 1}_10"] = temp_acc_4_10 / (k + 1.0)
    rank_of_returned_crop = [id_MOS.index(id_out[k]) for k in range(4)]
    for k in range(4):
        temp_wacc_4_5 = 0.0
        temp_wacc_4_10 = 0.0
        temp_rank_of_returned_crop = rank_of_returned_crop[: (k + 1)]
        temp_rank_of_returned_crop.sort()
        for j in range(k + 1):
            if temp_rank_of_returned_crop[j] <= 4:
                temp_wacc_4_5 += 1.0 * math.exp(-0.2 * (temp_rank_of_returned_crop[j] - j))
            if temp_rank_of_returned_crop[j] <= 9:
                temp_wacc_4_10 += 1.0 * math.exp(-0.1 * (temp_rank_of_returned_crop[j] - j))
        res[f"wacc{k + 1}_5"] = temp_wacc_4_5 / (k + 1.0)
        res[f"wacc{k + 1}_10"] = temp_wacc_4_10 / (k + 1.0)
    return res


# Few distinct values, so that MOS and predictions both tie often.
_values = st.integers(min_value=0, max_value=6).map(lambda v: 1.0 + v / 2)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=10, max_value=40).flatmap(
        lambda n: st.tuples(
            st.lists(_values, min_size=n, max_size=n), st.lists(_values, min_size=n, max_size=n)
        )
    )
)
def test_photo_score_metrics_match_the_official_loop(pair) -> None:
    mos, out = pair
    got = photo_score_metrics(mos, out)
    want = official(mos, out)
    if len(set(mos)) == 1 or len(set(out)) == 1:
        assert got["srcc"] == 0.0 and got["pcc"] == 0.0  # the official code gives NaN here
    else:
        want |= {"srcc": spearmanr(out, mos)[0], "pcc": pearsonr(out, mos)[0]}
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert set(got) == set(metrics.score_keys()) - {"acc5", "acc10", "wacc5", "wacc10"}
