from nami.cli import main

raise SystemExit(main())
