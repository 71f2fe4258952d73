"""From what the user asked, the model and the machine to a Plan: inputs, placement, memory, prediction, choice.

Pure: imports model/, catalog/, machine/ (not machine/probe) and the ground floor.
"""
