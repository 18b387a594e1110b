from study._cli import main

main()
