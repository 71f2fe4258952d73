"""What runq measures on this machine: calibration, tune's search and its records, and the generated models both run.

Edge: imports the pure core and llama/.
"""
