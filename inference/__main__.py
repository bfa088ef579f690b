from .predict import finish, main

finish(main())
