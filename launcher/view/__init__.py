"""Text and JSON renderings of core values (machines, models, plans). Pure: imports the pure core and llama/argv."""
