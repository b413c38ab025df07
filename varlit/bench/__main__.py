"""`python -m varlit.bench`."""

from .cli import main

if __name__ == "__main__":
    main()
