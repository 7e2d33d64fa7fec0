from postward.dkim.cli import main

raise SystemExit(main())
