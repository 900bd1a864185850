"""python -m simulator [--host H] [--port N] [--seed S] [--prefix P]"""

from simulator.runner import main

if __name__ == "__main__":
    main()
