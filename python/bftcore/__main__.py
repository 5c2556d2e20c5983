from bftcore.cli import main

main()
