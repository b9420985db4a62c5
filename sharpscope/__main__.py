"""``python -m sharpscope`` (also what ``torchrun -m sharpscope`` runs)."""

from .cli import main

if __name__ == "__main__":
    main()
