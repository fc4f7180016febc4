import subprocess
import sys

CORE = ["napari_unet", "napari_unet.cli", "napari_unet.training.engine", "napari_unet.inference.predict",
        "napari_unet.files.io", "napari_unet.metrics", "napari_unet.workflows.demo", "napari_unet.data.samples"]


def test_core_imports_neither_qt_nor_napari():
    code = (
        "import sys\n"
        f"for m in {CORE!r}: __import__(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'superqt', 'magicgui', 'vispy'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_every_core_module_imports_neither_qt_nor_napari():
    """Walk the whole package (new modules included), skipping only ``widgets`` and ``__main__``."""
    code = (
        "import importlib, pkgutil, sys, napari_unet\n"
        "names = [m.name for m in pkgutil.walk_packages(napari_unet.__path__, 'napari_unet.')\n"
        "         if not m.name.startswith('napari_unet.widgets') and m.name != 'napari_unet.__main__']\n"
        "for name in names: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'superqt', 'magicgui', 'vispy'})\n"
        "print(' '.join(names)); print('loaded:' + ','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, bad = out.strip().splitlines()
    assert {"napari_unet.training.engine", "napari_unet.inference.tiling", "napari_unet.files.io"} <= set(names.split())
    assert bad == "loaded:"


def test_importing_the_package_does_not_import_torch():
    code = "import sys, napari_unet, napari_unet.data.samples; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_inference_does_not_import_training():
    """The model bundle lives beside the models and the device in runtime: inference needs no training module."""
    code = ("import sys, napari_unet.inference.predict, napari_unet.inference.arrays, napari_unet.inference.large\n"
            "print(','.join(sorted(m for m in sys.modules if m.startswith('napari_unet.training'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
