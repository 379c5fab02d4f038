from services.sts.app import main

main()
