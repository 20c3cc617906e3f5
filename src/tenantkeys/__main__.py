"""``python -m tenantkeys`` runs the CLI."""

from tenantkeys.cli import main

main()
