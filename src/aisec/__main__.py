from aisec.cli import main

main()
