"""Evaluation: the simulated acquisition and scores (`simulate`), metrics, score tables, the
reports of `medsr evaluate` / `medsr compare` (`report`) and their figures."""
