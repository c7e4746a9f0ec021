"""``python -m absa`` runs the command line."""

from absa.cli import main

main()
