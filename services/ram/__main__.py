from services.ram.app import main

main()
