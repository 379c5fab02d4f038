from services.metadata.app import main

main()
