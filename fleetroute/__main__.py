from fleetroute.cli import main

main()
