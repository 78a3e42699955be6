"""`dnc plot`: the command (command.py), the figure registry (figures.py) and its figures against epoch
(course.py) and across layers (depth.py), what they share (style.py), and a sweep's figures (sweep.py).
Imports no torch: plotting a finished sweep is instant."""
