"""`python -m pytest_madengine`: the `madengine` command."""

from pytest_madengine.cli.app import main

if __name__ == "__main__":
    main()
