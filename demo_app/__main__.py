import sys

from demo_app.main import main

sys.exit(main())
