"""The metrics of a representation: neural collapse (collapse.py) and the AGOP with the NFA (agop.py)."""
