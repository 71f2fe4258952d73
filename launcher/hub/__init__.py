"""Models on the Hugging Face Hub and on disk: listings, range-read headers, pulls, local files, replicas.

Edge: imports the pure core.
"""
