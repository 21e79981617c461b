from fm2edge.cli import main

raise SystemExit(main())
