"""The machine a plan is for: its description, its measured speed constants, and the probe of this host.

Pure but for probe.py, the one edge here (NVML, psutil, py-cpuinfo).
"""
