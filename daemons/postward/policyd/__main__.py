from postward.policyd.cli import main

raise SystemExit(main())
