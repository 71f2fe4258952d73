"""What a GGUF holds: the header reader, ggml types, hyperparameters, tensor roles, architecture shapes.

Pure: imports only the ground floor (errors, units, paths).
"""
