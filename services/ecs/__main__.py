from services.ecs.app import main

main()
