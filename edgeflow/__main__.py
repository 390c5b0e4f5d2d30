from edgeflow.cli.main import main

main()
