"""python -m fitting.render.native [-v]: build the native kernels now
(:func:`fitting.render.native.prebuild.main`; spawned workers cannot import a package's
``__main__``, so the code lives there)."""
import sys

from fitting.render.native.prebuild import main

if __name__ == "__main__":
    sys.exit(main())
