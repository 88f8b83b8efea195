"""The functions that bench/functions.py runs as tasks on shoal, Ray and Dask.

Plain functions, no imports: shoal ships this module by value (`py_modules=[fnbench]`),
so a node need not be able to import it; Ray and Dask workers import it from the
driver's sys.path (the bench/ directory).
"""


def noop(x):
    return x


def inc(x):
    return x + 1


def add(a, b):
    return a + b


def total(*xs):
    return sum(xs)
