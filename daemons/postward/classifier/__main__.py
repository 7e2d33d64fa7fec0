from postward.classifier.cli import main

raise SystemExit(main())
