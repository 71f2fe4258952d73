"""The one way a request becomes a Plan (and the catalog's rows): every front end calls it.

Imports everything below the front ends; nothing below imports it.
"""
