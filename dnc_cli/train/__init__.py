"""`dnc train`: the command (command.py) and one trainer per kind of run (network.py, deep_rfm.py)."""
