"""`dnc analyze`: the command (command.py), one analyser per kind of run (network.py, deep_rfm.py) and the
sweep tables (sweeps.py)."""
