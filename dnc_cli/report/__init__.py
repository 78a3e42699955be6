"""`dnc report`: the command (command.py), a run's tables as the claims read them (run_data.py), the paper's claims
(claims.py), their verdicts for a run or over a sweep (verdicts.py) and report.md (render.py). Imports no torch."""
