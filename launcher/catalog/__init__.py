"""The models runq knows: profiles, their quants as planning sources, estimates, sampling.

Pure: imports model/ and the ground floor.
"""
