from shardproxy.cli import main

raise SystemExit(main())
