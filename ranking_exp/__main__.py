"""``python -m ranking_exp``: compose a run from the config groups, train, export, record."""
from ranking_exp.cli import main

if __name__ == "__main__":
    main()
