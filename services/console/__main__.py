from services.console.app import main

main()
