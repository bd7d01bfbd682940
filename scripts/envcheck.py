"""Probes the bootstrap runs with a given Python (scripts/bootstrap.sh, scripts/system_deps.sh).

    python envcheck.py version             print MAJOR.MINOR of this Python
    python envcheck.py lib SONAME          exit 0 when the dynamic loader finds SONAME (as an import
                                           of a wheel's extension module would), else print why
    python envcheck.py module NAME         exit 0 when NAME imports, else print why
    python envcheck.py imports NAME...     import each NAME; print one line per failure
                                           ("NAME: ErrorType: message"), exit 1 if any failed
    python envcheck.py url URL [TIMEOUT]   exit 0 when URL answers (HTTP status < 400)
    python envcheck.py pip-sources         print, one per line, the uv options that name the package
                                           sources this Python's pip is configured with (pip config
                                           files and PIP_* variables: index-url, extra-index-url,
                                           find-links, no-index), so that uv installs from where pip would;
                                           pip's `cert` (a CA bundle, e.g. of a TLS-inspecting proxy) as
                                           "--cert PATH", which the bootstrap hands to uv as SSL_CERT_FILE

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


# pip's configuration scopes, weakest first (a later one overrides an earlier one for the same key)
_PIP_SCOPES = ("global", "user", "site", ":env:")
_PIP_SOURCE_KEYS = ("index-url", "extra-index-url", "find-links", "no-index", "cert")


def _pip_sources():
    import subprocess

    try:
        out = subprocess.check_output([sys.executable, "-m", "pip", "config", "list"], stderr=subprocess.STDOUT)
    except (OSError, subprocess.CalledProcessError) as e:
        print("pip config list: %s" % e)
        return 1
    found = {}  # key -> (scope rank, value)
    for line in out.decode("utf-8", "replace").splitlines():
        name, sep, value = line.partition("=")
        scope, dot, key = name.rpartition(".")
        if not sep or not dot or key not in _PIP_SOURCE_KEYS or scope not in _PIP_SCOPES:
            continue
        rank = _PIP_SCOPES.index(scope)
        if key not in found or rank >= found[key][0]:
            found[key] = (rank, value.strip().strip("'\""))
    for key in _PIP_SOURCE_KEYS:
        if key not in found:
            continue
        value = found[key][1]
        if key == "no-index":
            if value.lower() in ("1", "true", "yes", "on"):
                print("--no-index")
            continue
        for item in value.split():
            print("--%s" % key)
            print(item)
    return 0


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
    if cmd == "pip-sources" and not args:
        return _pip_sources()
    sys.stderr.write("envcheck.py: bad arguments %r\n%s" % (argv, __doc__))
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
