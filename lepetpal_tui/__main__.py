from lepetpal_tui.cli import main

raise SystemExit(main())
