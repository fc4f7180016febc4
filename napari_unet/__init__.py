"""napari-unet: train and apply U-Nets for segmentation, inside napari or headless."""

__version__ = "0.1.0"
