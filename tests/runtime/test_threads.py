"""Importing the package leaves the host process alone; the CLI sets passive OpenMP waiting
before torch loads, so the OpenMP runtime really uses it (it reads the variable only then)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"  # the GNU OpenMP runtime prints its settings when it loads
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def _spincount(stderr: str) -> str | None:
    line = next((l for l in stderr.splitlines() if "GOMP_SPINCOUNT" in l), None)
    return None if line is None else line.split("=")[1].strip().strip("'")


def test_importing_the_package_changes_no_environment():
    out = _run("import os, sys, napari_unet, napari_unet.config, napari_unet.cli\n"
               "assert 'OMP_WAIT_POLICY' not in os.environ, os.environ['OMP_WAIT_POLICY']\n"
               "assert 'torch' not in sys.modules\n"
               "import torch")
    assert out.returncode == 0, out.stderr
    spin = _spincount(out.stderr)
    assert spin is None or spin != "0"  # the runtime's own default, untouched


def test_the_cli_entry_point_makes_openmp_wait_passively():
    out = _run("from napari_unet.cli import main\n"
               "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
               "import os, torch\nassert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'\n"
               "torch.ones(4).sum()")
    assert out.returncode == 0, out.stderr
    spin = _spincount(out.stderr)
    if spin is not None:  # a GNU OpenMP runtime: it took the setting (0 = sleep at once)
        assert spin == "0", out.stderr[-2000:]


def test_an_explicit_setting_wins_and_a_late_call_leaves_it_alone(monkeypatch):
    from napari_unet.runtime.threads import prefer_passive_wait

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert prefer_passive_wait() == "ACTIVE" and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    import torch  # noqa: F401  (loaded: too late to change the runtime's policy)

    assert prefer_passive_wait() == "runtime default" and "OMP_WAIT_POLICY" not in os.environ
