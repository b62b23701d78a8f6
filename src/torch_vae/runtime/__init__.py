"""Where and how computations run: the device (device.py), mixed precision (precision.py) and
the memory allocator's settings (allocator.py)."""
