"""The ctypes perf_event_open recorder: kernel -> recording file. Only `record` imports it."""
