"""napari-unet: train and apply U-Nets for segmentation, inside napari or headless."""

# Importing the package changes nothing in the host process (no environment variables, no torch):
# napari loads it next to other plugins. Thread policy is set where our own work starts
# (napari_unet.runtime.threads, called by the CLI's entry point).

__version__ = "0.1.0"
