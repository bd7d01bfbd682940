"""Probes the bootstrap runs with a given Python (scripts/bootstrap.sh, scripts/system_deps.sh).

    python envcheck.py version             print MAJOR.MINOR of this Python
    python envcheck.py lib SONAME          exit 0 when the dynamic loader finds SONAME (as an import
                                           of a wheel's extension module would), else print why
    python envcheck.py module NAME         exit 0 when NAME imports, else print why
    python envcheck.py imports NAME...     import each NAME; print one line per failure
                                           ("NAME: ErrorType: message"), exit 1 if any failed
    python envcheck.py url URL [TIMEOUT]   exit 0 when URL answers (HTTP status < 400)

Kept to syntax that old Pythons parse, so that `version` answers on any interpreter and the
bootstrap can say which version it found.
"""

import sys


def _version():
    print("%d.%d" % sys.version_info[:2])
    return 0


def _lib(soname):
    import ctypes

    try:
        ctypes.CDLL(soname)
    except OSError as e:
        print(str(e))
        return 1
    return 0


def _import(name):
    """None when `name` imports, else 'ErrorType: message' (last line of the error)."""
    import importlib

    try:
        importlib.import_module(name)
    except BaseException as e:  # an extension module can raise anything, SystemExit included
        msg = str(e).strip().splitlines()
        return "%s: %s" % (type(e).__name__, msg[-1] if msg else "")
    return None


def _module(name):
    err = _import(name)
    if err:
        print("%s: %s" % (name, err))
        return 1
    return 0


def _imports(names):
    failed = 0
    for name in names:
        err = _import(name)
        if err:
            print("%s: %s" % (name, err))
            failed += 1
    return 1 if failed else 0


def _url(url, timeout=10.0):
    try:
        from urllib.request import urlopen
    except ImportError:  # Python 2
        from urllib2 import urlopen
    try:
        resp = urlopen(url, timeout=float(timeout))
        code = getattr(resp, "status", None) or resp.getcode()
    except Exception as e:
        print("%s: %s" % (url, e))
        return 1
    return 0 if code < 400 else 1


def main(argv):
    if not argv:
        sys.stderr.write(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "version" and not args:
        return _version()
    if cmd == "lib" and len(args) == 1:
        return _lib(args[0])
    if cmd == "module" and len(args) == 1:
        return _module(args[0])
    if cmd == "imports" and args:
        return _imports(args)
    if cmd == "url" and 1 <= len(args) <= 2:
        return _url(*args)
    sys.stderr.write("envcheck.py: bad arguments %r\n%s" % (argv, __doc__))
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
