"""Optuna sweeper for ranking_exp (a Hydra plugin: Hydra only loads sweepers from here).

The only code of the project that imports optuna. Registers ``hydra/sweeper=ranking_optuna``.
"""
from hydra_plugins.ranking_exp_sweeper.config import register

register()
