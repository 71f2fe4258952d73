"""systemd services: unit text (unit.py, pure) and the units on disk and systemctl (manage.py).

Imports the pure core, llama/ and view/.
"""
