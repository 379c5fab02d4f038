from services.oss.app import main

main()
