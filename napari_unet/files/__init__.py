"""What is read and written on disk: images and model folders with atomic writes (io), OME-Zarr
pyramids (omezarr), bioimage.io packages (bioimage_io), annotation projects (project)."""
