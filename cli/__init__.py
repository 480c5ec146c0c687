"""The tfvae command line (installed as the ``tfvae_cli`` package)."""
