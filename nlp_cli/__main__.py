from nlp_cli.cli import main

main()
