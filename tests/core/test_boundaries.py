import subprocess
import sys

CORE = ["napari_unet", "napari_unet.cli", "napari_unet.training.engine", "napari_unet.inference.predict",
        "napari_unet.io", "napari_unet.metrics", "napari_unet.demo", "napari_unet.samples"]


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


def test_importing_the_package_does_not_import_torch():
    code = "import sys, napari_unet, napari_unet.samples; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
