"""`python -m easyalign` is the `easyalign` command."""
from easyalign.cli import main

if __name__ == "__main__":
    main()
