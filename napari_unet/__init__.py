"""napari-unet: train and apply U-Nets for segmentation, inside napari or headless."""

import os as _os

# OpenMP threads that spin while waiting steal the cores napari's event loop and other
# processes need; passive waiting made training steps ~2x faster on a busy 2-core machine.
# Must be set before torch loads; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
