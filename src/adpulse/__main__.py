from adpulse.cli.main import main

main()
