"""The Textual model picker: `runq` in a terminal, or `runq tui`. Imported only when it runs (textual is heavy)."""
