from galaxynode.cli import main

main()
