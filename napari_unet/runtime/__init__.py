"""Where and how the work runs: the device and its precision (device), the batch and patch size a
device gets (sizes), the OpenMP thread policy (threads)."""
