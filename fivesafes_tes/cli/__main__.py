"""`python -m fivesafes_tes.cli`, as the `fivesafes-tes` command."""

from fivesafes_tes.cli import main

if __name__ == "__main__":
    main()
