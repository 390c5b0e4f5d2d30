from edgeflow.cli.main import main

if __name__ == "__main__":  # spawned helper processes import this module too
    main()
