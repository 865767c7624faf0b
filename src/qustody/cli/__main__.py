from qustody.cli.main import main

main()
