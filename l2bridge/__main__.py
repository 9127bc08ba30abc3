from l2bridge.cli import main

raise SystemExit(main())
