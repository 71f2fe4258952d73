"""llama.cpp: building it, what a build accepts, its command lines, and the processes runq starts.

argv.py is the only writer of llama.cpp flags (server, bench and fit-params dialects). Edge: imports the pure core.
"""
