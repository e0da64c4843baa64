from .runner import main

raise SystemExit(main(prog="python -m arcfast.bench"))
