from adpulse.cli.start import main

main()
