from tfvae_cli.main import main

main()
