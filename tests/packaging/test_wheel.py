"""The wheel as users get it: its metadata, and the plugin run from it in a fresh venv.

The fresh venv holds no copy of torch or napari: a ``.pth`` file points it at links to this
environment's installed packages (everything except napari-unet itself), so the test needs no
network and no downloads, and every ``napari_unet`` import comes from the installed wheel, never
from the source tree (commands run outside it, without PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[2]
QT_BINDINGS = {"pyqt5", "pyqt6", "pyside2", "pyside6"}


def _run(cmd: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources (no build isolation: no network)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "napari_unet", src / "napari_unet", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", tmp / "dist", src], cwd=tmp)
    (found,) = (tmp / "dist").glob("napari_unet-*.whl")
    return found


def _metadata(wheel: Path) -> tuple[str, str, list[str]]:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        return zf.read(info).decode(), zf.read(entry).decode(), names


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_wheel_metadata_has_open_lower_bounds_and_no_qt_binding(wheel):
    meta, entry_points, names = _metadata(wheel)
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [r for r in requires if "extra ==" not in r]
    assert not [r for r in requires if "==" in r.split(";")[0]], "exact pins belong in constraints.txt"
    assert not QT_BINDINGS & {_name(r) for r in runtime}, runtime
    imported = {"napari", "magicgui", "qtpy", "psygnal", "torch", "numpy", "scipy", "scikit-image", "tifffile",
                "imageio", "safetensors", "zarr", "tqdm"}
    assert imported <= {_name(r) for r in runtime}, sorted(imported - {_name(r) for r in runtime})
    assert "Provides-Extra: all" in meta and 'napari[all]; extra == "all"' in requires
    assert "napari.manifest" in entry_points and "napari-unet = napari_unet.cli:main" in entry_points
    for packaged in ("napari_unet/napari.yaml", "napari_unet/pretrained/nuclei/model.json",
                     "napari_unet/pretrained/nuclei/model.safetensors", "napari_unet/sample_data/193ffaa5272d5c42.png"):
        assert packaged in names
    print(f"\n{wheel.name}: Requires-Dist (runtime) {runtime}")


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; torch, napari etc. visible through a .pth file."""
    tmp = tmp_path_factory.mktemp("venv")
    env_dir = tmp / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=tmp)
    python = env_dir / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
                .stdout.strip())
    host = tmp / "host-packages"  # links to this environment's packages, napari-unet left out
    host.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        lower = entry.name.lower()
        if lower.startswith(("napari_unet", "napari-unet", "__editable__")) or lower.endswith(".pth"):
            continue
        (host / entry.name).symlink_to(entry)
    (site / "host_packages.pth").write_text(f"{host}\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=tmp)
    return env_dir


def test_the_installed_wheel_validates_predicts_and_opens_its_sample(venv, tmp_path):
    python, cli = venv / "bin" / "python", venv / "bin" / "napari-unet"
    where = _run([python, "-c", "import napari_unet; print(napari_unet.__file__)"], cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv)), f"napari_unet imported from {where}, not the installed wheel"

    validate = _run([python, "-m", "npe2", "validate", "napari-unet"], cwd=tmp_path)
    assert "valid" in (validate.stdout + validate.stderr).lower()

    sample = Path(where).parent / "sample_data" / "193ffaa5272d5c42.png"
    predict = _run([cli, "predict", "pretrained:nuclei", sample, "--out", tmp_path / "out", "--quiet"], cwd=tmp_path)
    labels = tmp_path / "out" / "193ffaa5272d5c42.tif"
    assert labels.is_file()

    code = ("import json, numpy as np, tifffile\n"
            "from npe2 import PluginManager\n"
            "pm = PluginManager.instance(); pm.discover()\n"
            "samples = [s for p, s in pm.iter_sample_data() if p == 'napari-unet'][0]\n"
            "opened = {s.display_name: [(m['name'], t, list(np.shape(d))) for d, m, t in pm.commands.execute(s.command)]"
            " for s in samples}\n"
            "labels = tifffile.imread(r'%s')\n"
            "print(json.dumps({'layers': opened, 'predicted objects': int(labels.max())}))") % labels
    opened = json.loads(_run([python, "-c", code], cwd=tmp_path).stdout.strip().splitlines()[-1])
    names = sorted([name for name, _, _ in layers] for layers in opened["layers"].values())
    assert names == [["nuclei", "nuclei ground truth"], ["stained nuclei", "stained nuclei ground truth"]]
    assert opened["predicted objects"] > 20
    print(f"\nimported from {where}\n{validate.stdout.strip() or validate.stderr.strip()}\n"
          f"{predict.stdout.strip()}\n{opened}")
