"""Hydra configs, shipped inside the package as ranking_exp.conf (a link to the repo's conf/)."""
