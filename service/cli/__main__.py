"""`python -m service.cli` is the `pipeserve` command, as `python -m service` is."""

from service.cli import main

if __name__ == "__main__":
    main()
