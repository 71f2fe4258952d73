"""The runq command: parse, call the pipeline, render, exit codes.

A front end: imports anything but is imported only by __main__.
"""
