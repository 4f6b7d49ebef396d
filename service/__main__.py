"""`python -m service` is the `pipeserve` command (`python -P -m service` from any directory)."""

from service.cli import main

if __name__ == "__main__":
    main()
