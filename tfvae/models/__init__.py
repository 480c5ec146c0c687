"""tfvae's models, one module per family."""
