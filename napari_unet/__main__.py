"""``python -m napari_unet`` runs the command-line interface."""

from napari_unet.cli import main

raise SystemExit(main())
