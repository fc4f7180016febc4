"""bench/peers/train_stardist3d.py without StarDist: its configuration rules and arguments (the
peer itself runs only in its own venv, from bench/bench_3d.py --peers)."""

from __future__ import annotations

import pytest

from helpers import bench_module


@pytest.fixture(scope="module")
def peer():
    yield from bench_module("train_stardist3d", folder="bench/peers")


def test_grid_and_patch_follow_the_3d_example_within_the_volumes(peer):
    heavy = {name for name in peer.imported if name.split(".")[0] in ("tensorflow", "stardist", "csbdeep")}
    assert not heavy  # imported in main() only
    assert peer.grid_for((1.0, 1.0, 1.0)) == (2, 2, 2)
    assert peer.grid_for((2.0, 1.0, 1.0)) == (1, 2, 2)  # no subsampling along the coarse z
    assert peer.patch_for([(32, 96, 96)] * 5, (2, 2, 2)) == (32, 96, 96)  # 48 planes wanted, 32 there
    assert peer.patch_for([(16, 96, 96)] * 5, (1, 2, 2)) == (16, 96, 96)
    assert peer.patch_for([(30, 200, 90)], (2, 2, 2)) == (24, 96, 88)  # multiples of 2**depth * grid


def test_arguments(peer, tmp_path, monkeypatch):
    from peer_common import THREAD_VARIABLES, parse_args

    for name in THREAD_VARIABLES:  # parse_args sets them; restored after the test
        monkeypatch.setenv(name, "")
    args = parse_args("x", peer.more_arguments, ["--data", str(tmp_path), "--z-scale", "2", "--budget", "120",
                                                 "--threads", "1", "--out", str(tmp_path / "out")])
    assert (args.data, args.z_scale, args.budget, args.threads) == (tmp_path, 2.0, 120.0, 1)
    assert (tmp_path / "out").is_dir()
    with pytest.raises(SystemExit):  # the data folder is required
        parse_args("x", peer.more_arguments, ["--budget", "120", "--out", str(tmp_path / "out")])
