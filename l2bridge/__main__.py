from l2bridge.ops.cli import main

raise SystemExit(main())
