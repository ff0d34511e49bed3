from flowctrl.cli import main

raise SystemExit(main())
