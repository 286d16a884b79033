import numpy as np
import pytest

from imfl.query import ACQUISITIONS, Rows, eeq, get_query, least_confidence, round_plan, split_by_uncertainty
from imfl.query.acquisition import kmeans


def blobs(n_per=30, centers=8, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim)) * 10
    x = np.concatenate([c[i] + rng.normal(size=(n_per, dim)) for i in range(centers)])
    return x.astype(np.float32), np.repeat(np.arange(centers), n_per)


def test_least_confidence():
    p = np.array([[0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(least_confidence(p), [0.1, 2 / 3, 0.5])


def test_eeq_takes_the_most_uncertain_item_of_each_cluster():
    x, _ = blobs()
    unc = np.random.default_rng(1).random(len(x))
    picked = eeq(x, unc, 8, seed=3)
    assign, _, _ = kmeans(x, 8, seed=3)
    # one item per cluster, and it is that cluster's most uncertain member
    assert sorted(assign[picked]) == list(range(8))
    for i in picked:
        members = np.flatnonzero(assign == assign[i])
        assert unc[i] == unc[members].max()
    # ordered most uncertain first
    assert list(unc[picked]) == sorted(unc[picked], reverse=True)


def test_eeq_without_a_student_is_diversity_alone():
    x, true = blobs()
    picked = eeq(x, None, 8, seed=0)
    assert sorted(true[picked]) == list(range(8))  # well-separated blobs: one from each
    assign, _, centres = kmeans(x, 8, seed=0)
    for i in picked:  # the member nearest its centre
        members = np.flatnonzero(assign == assign[i])
        d = np.linalg.norm(x[members] - centres[assign[i]], axis=1)
        assert np.isclose(np.linalg.norm(x[i] - centres[assign[i]]), d.min())


def test_large_pools_fit_kmeans_on_a_sample_and_assign_every_row():
    """Past KMEANS_EXACT_MAX rows, k-means is fitted on a seeded sample and every row goes to its nearest centre (in
    chunks): the same clusters on well-separated blobs, each row's distance right, and the same picks for the same seed."""
    from imfl.query import acquisition

    x, true = blobs(n_per=2_500, centers=12, dim=24, seed=4)  # 30,000 rows: past the exact limit
    assert len(x) > acquisition.KMEANS_EXACT_MAX
    assign, dist, centres = kmeans(x, 12, seed=1)
    nearest = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(assign, nearest)
    np.testing.assert_allclose(dist, np.linalg.norm(x - centres[assign], axis=1), rtol=1e-4, atol=1e-3)
    # each true blob is exactly one cluster
    assert len({(a, t) for a, t in zip(assign, true)}) == 12
    unc = np.random.default_rng(2).random(len(x))
    picked = eeq(x, unc, 12, seed=1)
    np.testing.assert_array_equal(picked, eeq(x, unc, 12, seed=1))
    assert sorted(true[picked]) == list(range(12))
    for i in picked:
        assert unc[i] == unc[assign == assign[i]].max()


def test_split_sends_the_most_uncertain_to_the_human():
    unc = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    human, llm = split_by_uncertainty(np.array([0, 1, 2, 3, 4]), unc, 2)
    assert list(human) == [1, 3]
    assert sorted(llm) == [0, 2, 4]
    assert unc[human].min() >= unc[llm].max()


@pytest.mark.parametrize("schedule", ["geometric", "linear"])
@pytest.mark.parametrize("total,human,rounds", [(1000, 200, 5), (250, 50, 5), (500, 100, 4), (97, 31, 3)])
def test_human_batches_decay_and_sum_to_the_human_budget(schedule, total, human, rounds):
    plan = round_plan(total, human, rounds, schedule)
    hs = [h for h, _ in plan]
    assert sum(hs) == human
    assert sum(h + l for h, l in plan) == total
    assert all(a >= b for a, b in zip(hs, hs[1:])) and hs[0] > hs[-1]
    assert all(l >= 0 for _, l in plan)


def test_schedule_caps_human_at_the_round_size():
    plan = round_plan(1000, 1000, 5)  # human-only
    assert plan == [(200, 0)] * 5
    plan = round_plan(1000, 600, 5)  # the first rounds are full of humans, the rest spills over
    assert [h for h, _ in plan] == sorted((h for h, _ in plan), reverse=True)
    assert sum(h for h, _ in plan) == 600 and all(h <= 200 for h, _ in plan)


def test_fixed_schedule_is_flat():
    assert [h for h, _ in round_plan(1000, 200, 5, "fixed")] == [40] * 5


@pytest.mark.parametrize("name", sorted(ACQUISITIONS))
def test_acquisition_functions_are_seeded_and_return_distinct_indices(name):
    x, _ = blobs()
    unc = np.random.default_rng(2).random(len(x))
    a = ACQUISITIONS[name](x, unc, 10, 7)
    b = ACQUISITIONS[name](x, unc, 10, 7)
    assert list(a) == list(b)
    assert len(set(a.tolist())) == 10 and a.max() < len(x)


@pytest.mark.parametrize("n_per", [300, 2_500])  # 3,600 rows: exact k-means; 30,000: a sample, then assignment
def test_a_rows_view_of_a_memory_mapped_pool_selects_exactly_what_the_copied_rows_do(tmp_path, n_per):
    x, _ = blobs(n_per=n_per, centers=12, dim=24, seed=5)
    pool = np.lib.format.open_memmap(tmp_path / "pool.npy", mode="w+", dtype=np.float32, shape=x.shape)
    pool[:] = x
    keep = np.sort(np.random.default_rng(0).choice(len(x), len(x) - 100, replace=False))  # some items are labeled
    rows = Rows(pool, keep)
    assert len(rows) == len(keep) and rows.shape == (len(keep), 24)
    np.testing.assert_array_equal(np.asarray(rows), x[keep])
    np.testing.assert_array_equal(rows[10:20], x[keep[10:20]])
    unc = np.random.default_rng(1).random(len(keep))
    for name, query in ACQUISITIONS.items():
        np.testing.assert_array_equal(query(rows, unc, 12, 3), query(x[keep], unc, 12, 3), err_msg=name)


def test_query_kmeans_iter_reaches_the_acquisition_functions_that_cluster():
    x, _ = blobs(n_per=40, centers=12)
    # One Lloyd step stops where k-means++ put the centres; a hundred move them on (a cluster's nearest item changes).
    short, full = get_query("diversity", kmeans_iter=1), get_query("diversity", kmeans_iter=100)
    assert short.keywords == {"max_iter": 1} and full.keywords == {"max_iter": 100}
    assert sorted(short(x, None, 12, 0)) != sorted(full(x, None, 12, 0)) or np.array_equal(
        kmeans(x, 12, 0, max_iter=1)[2], kmeans(x, 12, 0, max_iter=100)[2]
    )
    # Strategies without clustering take no such keyword and come back as registered.
    assert get_query("random", kmeans_iter=1) is ACQUISITIONS["random"]
    assert get_query("uncertainty", kmeans_iter=1) is ACQUISITIONS["uncertainty"]
