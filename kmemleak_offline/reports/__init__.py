"""Renderers of an Analysis: text (perf-prof's format), json, flame graph. None recomputes it."""
