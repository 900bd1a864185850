"""python -m rollbackctl.sim [--host H] [--port N] [--seed S] [--prefix P]"""

from rollbackctl.sim.runner import main

if __name__ == "__main__":
    main()
